"""The entry point: `python -m alignlab.run [group=option ...] [key=value ...]` (Hydra; -m for sweeps).

Composes conf/, builds model, sampler, reward, optimizer, prompts and method, and runs the method's
rounds with a Lightning Trainer that writes the run directory (architecture.md's contract).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

import alignlab  # noqa: F401  (repairs the torchvision import before anything imports it)
from alignlab.config import register_schemas
from alignlab.errors import AlignlabError, ConfigError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("alignlab")
register_schemas()


def build_model(cfg: DictConfig, finetune: bool = True):
    """The configured model with its fine-tuning set up (LoRA added, or the UNet unfrozen);
    `finetune=False`: the base model as configured."""
    from alignlab.models import add_lora

    model = instantiate(cfg.model)
    if not finetune:
        return model
    tune = cfg.finetune
    if tune.mode == "lora":
        add_lora(model, tune.rank, tune.alpha, tune.init, list(tune.target_modules))
    elif tune.mode == "full":
        model.unet.requires_grad_(True)
    else:
        raise ConfigError(f"finetune.mode must be lora or full, got {tune.mode!r}")
    return model


def build(cfg: DictConfig, run_dir: Path):
    """Instantiate every component; all validation happens here, before anything is written."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from alignlab.eval.callback import EvalCallback
    from alignlab.training.callbacks import ExportWeights, RoundRecorder

    L.seed_everything(cfg.seed, verbose=False)  # LoRA init; rollouts use their own per-round generators
    model = build_model(cfg)
    method = instantiate(
        cfg.method, model=model, sampler=instantiate(cfg.sampler), reward=instantiate(cfg.reward),
        optimizer=instantiate(cfg.optimizer), prompts=instantiate(cfg.prompts), seed=cfg.seed,
    )
    callbacks = [
        EvalCallback(run_dir, **cfg.eval),  # before RoundRecorder: it adds eval/* to the round's row
        RoundRecorder(run_dir),
        ExportWeights(run_dir),
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="round-{epoch:04d}", save_last=True,
                        save_top_k=1, every_n_epochs=1),
    ]
    trainer = instantiate(cfg.trainer, default_root_dir=str(run_dir), logger=instantiate(cfg.logger),
                          callbacks=callbacks)
    return method, trainer


def train(cfg: DictConfig) -> float:
    """Run (or resume) the configured method; returns the last round's held-out reward when evaluation
    ran (`eval/reward_mean`), else its train reward — the value a Hydra sweeper optimises."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    method, trainer = build(cfg, run_dir)
    if getattr(method, "evaluation_only", False):  # e.g. method=asyndm: nothing to train or resume
        trainer.test(method)
        return float(trainer.callback_metrics.get("reward_mean", float("nan")))
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if cfg.resume and last.exists() else None
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    trainer.fit(method, ckpt_path=ckpt_path)
    return final_reward(run_dir)


def final_reward(run_dir: Path) -> float:
    from alignlab.training.artifacts import read_metrics

    rows = read_metrics(run_dir / "metrics.jsonl")
    last = rows[-1] if rows else {}
    return float(last.get("eval/reward_mean", last.get("reward_mean", float("nan"))))


def one_line(message: str) -> str:
    """Hydra's multi-line composition messages as one line (search paths and types left out)."""
    keep = []
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("Config search path"):
            break
        if line and not line.startswith(("object_type", "provider=")):
            keep.append(line.rstrip(":") + (":" if line.endswith(":") else ""))
    return " ".join(keep).replace(": ", ": ", 1)


def check_composition(argv: list[str]) -> None:
    """Compose a single run's config before Hydra does, so a bad override gets one line and exit 2.

    Sweeps (-m) and Hydra's own flags are left to Hydra."""
    if any(arg.startswith("-") for arg in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            compose("config", overrides=argv)
    except HydraException as error:
        details = [str(error)] + ([str(error.__cause__)] if error.__cause__ else [])
        print(f"alignlab: error: {one_line(chr(10).join(details))}", file=sys.stderr)
        sys.exit(2)


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None and not isinstance(error, AlignlabError):
        error = error.__cause__
    return error


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        return train(cfg)
    except (AlignlabError, InstantiationException, OmegaConfBaseException) as error:
        cause = _root_cause(error)
        message = str(cause) if isinstance(cause, AlignlabError) else str(error).splitlines()[0]
        print(f"alignlab: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    check_composition(sys.argv[1:])
    main()
