"""Evaluate a finished (or running) run's exported weights on a prompt split:

    python -m alignlab.evaluate run_dir=<dir> [split=test] [samples_per_prompt=4] [max_prompts=8]
                                [batch_size=8] [seed=0] [rewards=[clip,pickscore]] [name=eval_test] [--base]

Rebuilds the model from <run_dir>/.hydra/config.yaml as alignlab.run does, loads <run_dir>/lora (or
<run_dir>/unet for finetune.mode=full; `--base`: neither, the pre-trained model for comparison), samples
with the fixed evaluation seeds (alignlab/eval) and writes <run_dir>/eval/eval.json, eval.md and grid.png
(`--base`: base.json, base.md, base_grid.png; `name=X`: X.json, X.md, X_grid.png). Defaults come from the
run's `eval:` block and seed; the reward is the run's own unless `rewards=[...]` names reward configs
(conf/reward/<name>.yaml); the first reward gives the top-level reward_mean. With a CLIP among the rewards
and >= 2 samples per prompt, `diversity` is the mean pairwise cosine distance of each prompt's CLIP image
embeddings, averaged over prompts; on world prompts the oracle's score and accuracy come overall and per
category.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

import alignlab  # noqa: F401  (repairs the torchvision import before anything imports it)
from alignlab.config import upgrade_recorded
from alignlab.errors import ConfigError

KEYS = {"run_dir", "split", "samples_per_prompt", "max_prompts", "batch_size", "seed", "rewards", "name"}


def parse_args(argv: list[str]) -> tuple[dict, bool]:
    parser = argparse.ArgumentParser(prog="python -m alignlab.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"one of {sorted(KEYS)}")
    parser.add_argument("--base", action="store_true", help="evaluate the base model (no fine-tuned weights)")
    args = parser.parse_args(argv)
    options = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS:
            raise ConfigError(f"expected key=value with key one of {sorted(KEYS)}, got {item!r}")
        options[key] = yaml.safe_load(value) if key not in ("run_dir", "name") else value
    if "run_dir" not in options:
        raise ConfigError("run_dir=<run directory> is required")
    return options, args.base


def load_run_config(run_dir: Path):
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "config.yaml"
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir: no such directory '{run_dir}'")
    if not path.is_file():
        raise ConfigError(f"run_dir: '{run_dir}' has no .hydra/config.yaml (not an alignlab run directory)")
    return upgrade_recorded(OmegaConf.load(path))


def load_lora(model, directory: Path) -> None:
    """Load `pytorch_lora_weights.safetensors` (diffusers format, as save_lora writes it) into the UNet's
    LoRA adapter added by build_model; every key must match."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = directory / "pytorch_lora_weights.safetensors"
    if not path.is_file():
        raise ConfigError(f"run_dir: no LoRA weights at '{path}' (has the run finished a round?)")
    state = {k.removeprefix("unet."): v for k, v in load_file(path).items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(model.unet, convert_unet_state_dict_to_peft(state), adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", None) or []
    missing = [k for k in (getattr(result, "missing_keys", None) or []) if "lora_" in k]
    if unexpected or missing or not state:
        raise ConfigError(f"run_dir: '{path}' does not match the run's LoRA config "
                          f"({len(unexpected)} unexpected, {len(missing)} missing keys)")


def load_model(cfg, run_dir: Path, base: bool = False):
    """The run's model as alignlab.run builds it, with the run's exported weights (none when `base`)."""
    from hydra.utils import get_object

    from alignlab.run import build_model

    if base:
        return build_model(cfg, finetune=False)
    if getattr(get_object(cfg.method._target_), "evaluation_only", False):
        raise ConfigError(f"run_dir: method={cfg.method._target_.rsplit('.', 1)[-1].lower()} trains nothing, so the "
                          "run has no weights of its own; pass --base to evaluate the model it samples with")
    model = build_model(cfg)
    if cfg.finetune.mode == "full":
        from diffusers import UNet2DConditionModel

        if not (run_dir / "unet").is_dir():
            raise ConfigError(f"run_dir: no fine-tuned UNet at '{run_dir / 'unet'}'")
        model.unet = UNet2DConditionModel.from_pretrained(run_dir / "unet", torch_dtype=model.frozen_dtype)
    else:
        load_lora(model, run_dir / "lora")
    model.requires_grad_(False)
    return model


def load_rewards(cfg, names: list[str] | None) -> dict:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from alignlab.run import CONF_DIR

    if not names:
        return {"reward": instantiate(cfg.reward)}
    rewards = {}
    for name in names:
        path = Path(CONF_DIR) / "reward" / f"{name}.yaml"
        if not path.is_file():
            options = sorted(p.stem for p in path.parent.glob("*.yaml"))
            raise ConfigError(f"rewards: no reward config '{name}' (options: {options})")
        # merged with the run's model: reward=clip follows the model (the world CLIP on the world model)
        rewards[name] = instantiate(OmegaConf.merge({"model": cfg.model}, {"reward": OmegaConf.load(path)}).reward)
    return rewards


def evaluate_run(run_dir: str | Path, split: str | None = None, samples_per_prompt: int | None = None,
                 max_prompts: int | None = None, batch_size: int | None = None, seed: int | None = None,
                 rewards: list[str] | None = None, base: bool = False, name: str | None = None) -> dict:
    """Evaluate a run directory's weights; writes <run_dir>/eval/<name>.json (default eval, or base) and .md,
    and returns the json's content."""
    import torch
    from hydra.utils import instantiate

    from alignlab.config import EvalConfig
    from alignlab.eval import evaluate_prompts, select_prompts
    from alignlab.rewards import preload
    from alignlab.training.artifacts import sample_grid

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    defaults = {**EvalConfig().__dict__, **dict(cfg.get("eval") or {})}
    split = split or defaults["split"]
    samples_per_prompt = samples_per_prompt or defaults["samples_per_prompt"]
    max_prompts = max_prompts or defaults["max_prompts"]
    batch_size = batch_size or defaults["batch_size"]
    seed = cfg.seed if seed is None else seed
    if isinstance(rewards, str):
        rewards = [rewards]

    prompt_set = instantiate(cfg.prompts)
    prompts, used = select_prompts(prompt_set, split, max_prompts)
    scorers = load_rewards(cfg, rewards)
    model = load_model(cfg, run_dir, base)
    sampler = instantiate(cfg.sampler)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    for scorer in scorers.values():
        if isinstance(scorer, torch.nn.Module):
            scorer.to(device)
        preload(scorer, device)  # before any sampling: missing reward weights stop here

    names = list(scorers)
    first = evaluate_prompts(model, sampler, scorers[names[0]], prompts, samples_per_prompt, batch_size, seed,
                             prompt_set=prompt_set)
    by_reward = {names[0]: first}
    for name in names[1:]:  # the same images (fixed seeds), scored by the other rewards
        scores = torch.as_tensor(scorers[name](first["images"].to(device), first["prompts"])).float().cpu()
        by_reward[name] = {
            "reward_mean": float(scores.mean()), "reward_std": float(scores.std(unbiased=False)),
            "per_prompt": {p: float(scores[i * samples_per_prompt : (i + 1) * samples_per_prompt].mean())
                           for i, p in enumerate(prompts)},
            "rewards": scores.tolist(),
        }
    report = {
        "run_dir": str(run_dir), "weights": "base" if base else cfg.finetune.mode, "split": used,
        "samples_per_prompt": samples_per_prompt, "seed": seed, "prompts": prompts,
        "reward_mean": first["reward_mean"], "reward_std": first["reward_std"], "per_prompt": first["per_prompt"],
        "rewards": {name: {k: v for k, v in r.items() if k in ("reward_mean", "reward_std", "per_prompt")}
                    for name, r in by_reward.items()},
        **(prompt_set.judge.report(first["images"], first["prompts"]) if prompt_set.judge else {}),  # gold metric
        **diversity(scorers, first["images"], prompts, samples_per_prompt),
    }
    out = run_dir / "eval"
    out.mkdir(exist_ok=True)
    stem = name or ("base" if base else "eval")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown_table(report))
    captions = [f"{p} | {r:.3g}" for p, r in zip(first["prompts"], first["rewards"], strict=True)]
    grid = sample_grid(first["images"], captions, samples_per_prompt if samples_per_prompt > 1 else 4)
    grid.save(out / ("grid.png" if stem == "eval" else f"{stem}_grid.png"))
    return report


def diversity(scorers: dict, images, prompts: list[str], samples_per_prompt: int) -> dict:
    """{"diversity", "diversity_per_prompt"} in the space of the first CLIP among the rewards; {} without one
    (or with one sample per prompt)."""
    from alignlab.eval.evaluate import pairwise_diversity

    clip = next((s for s in scorers.values() if hasattr(s, "image_embeddings")), None)
    if clip is None or samples_per_prompt < 2:
        return {}
    per_prompt = pairwise_diversity(clip.image_embeddings(images), samples_per_prompt)
    return {"diversity": sum(per_prompt) / len(per_prompt),
            "diversity_per_prompt": dict(zip(prompts, per_prompt, strict=True))}


def markdown_table(report: dict) -> str:
    names = list(report["rewards"])
    lines = [f"# Evaluation of {report['run_dir']} ({report['weights']} weights, {report['split']} split, "
             f"{report['samples_per_prompt']} samples per prompt, seed {report['seed']})", "",
             "| prompt | " + " | ".join(f"mean {n}" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for prompt in report["prompts"]:
        lines.append(f"| {prompt} | " + " | ".join(f"{report['rewards'][n]['per_prompt'][prompt]:.4g}"
                                                 for n in names) + " |")
    lines.append("| **all** | " + " | ".join(
        f"**{report['rewards'][n]['reward_mean']:.4g}** ± {report['rewards'][n]['reward_std']:.3g}" for n in names)
        + " |")
    if "diversity" in report:
        lines += ["", f"Diversity (mean pairwise cosine distance of a prompt's CLIP image embeddings): "
                      f"{report['diversity']:.4f}"]
    if "oracle_score" in report:
        lines += ["", f"World oracle (ground truth): score {report['oracle_score']:.3f}, "
                      f"strict accuracy {report['oracle_accuracy']:.3f}"]
    if "oracle_by_category" in report:
        lines += ["", "| category | images | oracle score | oracle accuracy |", "|---|---:|---:|---:|"]
        lines += [f"| {c} | {r['images']} | {r['oracle_score']:.3f} | {r['oracle_accuracy']:.3f} |"
                  for c, r in report["oracle_by_category"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    from alignlab.run import BAD_INPUT, error_message, say_error

    try:
        options, base = parse_args(sys.argv[1:] if argv is None else argv)
        report = evaluate_run(**options, base=base)
    except BAD_INPUT as error:
        say_error(error_message(error))
        sys.exit(2)
    out = Path(options["run_dir"]) / "eval"
    print(f"{report['weights']} weights on {len(report['prompts'])} {report['split']} prompts: "
          f"reward_mean {report['reward_mean']:.6g} ± {report['reward_std']:.3g} -> {out}")
    return report


if __name__ == "__main__":
    main()
