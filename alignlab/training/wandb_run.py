"""What a W&B workspace needs to compare runs: each run's settings as flat config keys, one group per sweep,
readable names and tags, per-sample tables to sort and filter, and a summary of where the run ended."""

from __future__ import annotations

import logging

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from alignlab.training.artifacts import to_uint8

log = logging.getLogger("alignlab")

# config groups whose chosen option names the run (`method.name: ddpo`), in the order of its name
NAMED_GROUPS = ("method", "reward", "model", "prompts", "sampler", "optimizer", "experiment")


def hydra_settings() -> DictConfig | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def choices(hydra: DictConfig | None = None) -> dict[str, str]:
    """The option picked in each named config group (Hydra's runtime choices), e.g. {"method": "ddpo"}."""
    hydra = hydra if hydra is not None else hydra_settings()
    picked = hydra.runtime.choices if hydra is not None else {}
    return {group: str(picked[group]) for group in NAMED_GROUPS if picked.get(group) not in (None, "null")}


def flat_config(cfg: DictConfig) -> dict:
    """The resolved run config as dotted keys (`optimizer.lr`, `method.clip_range`, `seed`), plus each named
    group's option as `<group>.name`: the keys W&B filters, groups and draws parallel coordinates by."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree.pop("hydra", None)
    flat: dict = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(tree, "")
    for group, option in choices().items():
        flat.setdefault(f"{group}.name", option)
    return flat


def run_identity(seed: int, hydra: DictConfig | None = None) -> dict:
    """W&B's name, group, job type and tags: `ddpo-clip-seed0`, the sweep directory of a multirun (one group
    per `-m`), the method, and the chosen options. `hydra`: the run's Hydra settings (default: this job's)."""
    hydra = hydra if hydra is not None else hydra_settings()
    picked = choices(hydra)
    multirun = hydra is not None and getattr(hydra.mode, "name", hydra.mode) == "MULTIRUN"  # RunMode or its name
    return {"name": "-".join([*(picked[g] for g in ("method", "reward") if g in picked), f"seed{seed}"]),
            "group": str(hydra.sweep.dir) if multirun else None,
            "job_type": picked.get("method"),
            "tags": [f"{group}:{option}" for group, option in picked.items()]}


def sample_table(images: torch.Tensor, prompts: list[str], rewards, round_no: int, scored=None):
    """A W&B Table, one row per sample: round, prompt, image, reward and, on world prompts, the oracle's score
    and pass (their judge_images; None: no gold judge)."""
    import wandb

    columns = ["round", "prompt", "image", "reward", *(("oracle_score", "passed") if scored else ())]
    table = wandb.Table(columns=columns)
    pictures = to_uint8(images)
    for i, prompt in enumerate(prompts):
        row = [round_no, prompt, wandb.Image(pictures[i]), float(rewards[i])]
        if scored:
            row += [float(scored[0][i]), bool(scored[1][i])]
        table.add_data(*row)
    return table


def run_summary(rows: list[dict]) -> dict:
    """Where the run ended: the last and the best held-out reward and gold metric, the images sampled (the last
    row's running total) and the seconds its rounds took (every time_* of every row, so a resumed run counts
    each round once)."""
    summary = {"images_sampled": float(rows[-1].get("images_sampled", 0.0)) if rows else 0.0,
               "round_seconds": float(sum(v for r in rows for k, v in r.items() if k.startswith("time_")))}
    for key in ("eval/reward_mean", "eval/oracle_score", "eval/oracle_accuracy"):
        values = [r[key] for r in rows if key in r]
        if values:
            summary[f"{key}_final"], summary[f"{key}_best"] = values[-1], float(np.max(values))
    return summary


def alert(logger, text: str) -> None:
    """A W&B alert (an e-mail or Slack message online); offline runs keep it in the run file."""
    import wandb

    try:
        logger.experiment.alert(title="reward hacking", text=text, level=wandb.AlertLevel.WARN)
    except Exception as error:  # noqa: BLE001 -- an alert must never stop a run
        log.warning("W&B alert not sent: %s", error)
