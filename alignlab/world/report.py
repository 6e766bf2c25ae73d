"""The world's quality report: oracle accuracy per category, world-CLIP agreement, loss curves, samples.

    python -m alignlab.world.report [--weights DIR] [--out world_build/report]

Numbers in docs/world.md come from this command with the shipped weights.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from alignlab.samplers.ddim import DDIMSampler  # noqa: E402
from alignlab.eval.evaluate import evaluate_prompts  # noqa: E402
from alignlab.training.artifacts import sample_grid  # noqa: E402
from alignlab.world.clip import hard_negative  # noqa: E402
from alignlab.world.contrasts import KINDS, clip_text_cosine, minimal_pairs, sequence_difference  # noqa: E402
from alignlab.world.grammar import CATEGORIES, all_specs, evenly_spread, spec_of  # noqa: E402
from alignlab.world.oracle import OracleReward  # noqa: E402
from alignlab.world.render import render_batch  # noqa: E402
from alignlab.world.t2i_training import T2I, T2I_RELATIONS  # noqa: E402

NEGATIVES = 4  # attribute-swapped captions per image in the retrieval test


def report_prompts(split: str, per_category: int) -> dict[str, list[str]]:
    """Up to `per_category` prompts of each category of `split`, evenly spread over the grammar's order."""
    return {category: evenly_spread([s.prompt for s in all_specs([category]) if s.split == split], per_category)
            for category in CATEGORIES}


def caption_retrieval(clip_reward, images: torch.Tensor, prompts: list[str], seed: int = 0) -> float:
    """Fraction of images whose own caption scores above all of NEGATIVES attribute-swapped captions."""
    rng = np.random.default_rng(seed)
    wins = []
    for image, prompt in zip(images, prompts, strict=True):
        negatives = list(dict.fromkeys(hard_negative(spec_of(prompt), rng).prompt for _ in range(NEGATIVES)))
        captions = [prompt] + negatives
        scores = clip_reward(image[None].expand(len(captions), -1, -1, -1), captions)
        wins.append(bool(torch.as_tensor(scores).argmax() == 0))
    return float(np.mean(wins))


def evaluate_world(model, clip_reward, split: str = "test", per_category: int = 24, samples_per_prompt: int = 8,
                   num_steps: int = 10, guidance_scale: float = 3.0, seed: int = 0, batch_size: int = 64) -> dict:
    """Sample every chosen prompt `samples_per_prompt` times and score the images with the oracle and the CLIP."""
    sampler = DDIMSampler(num_steps=num_steps, guidance_scale=guidance_scale, eta=1.0, progress=False)
    results, pooled = {}, {"oracle": [], "clip": []}
    for category, prompts in report_prompts(split, per_category).items():
        out = evaluate_prompts(model, sampler, OracleReward(), prompts, samples_per_prompt, batch_size, seed)
        scores = torch.tensor(out["rewards"])  # OracleReward's scores; all constraints met <=> score 1
        passed = scores == 1
        clip = torch.as_tensor(clip_reward(out["images"], out["prompts"])).float()
        pooled["oracle"] += scores.tolist()
        pooled["clip"] += clip.tolist()
        results[category] = {
            "prompts": len(prompts), "images": len(out["prompts"]),
            "accuracy": float(passed.float().mean()), "score": float(scores.mean()),
            "clip_spearman": float(spearmanr(clip, scores).statistic) if scores.std() > 0 else float("nan"),
            "images_tensor": out["images"], "prompt_rows": out["prompts"],
        }
    results["clip_spearman_pooled"] = float(spearmanr(pooled["clip"], pooled["oracle"]).statistic)
    return results


def encoder_separation(model, clip_reward=None) -> dict[str, dict[str, float]]:
    """Per kind of minimal pair (contrasts.KINDS): the smallest and mean relative difference of the
    text-to-image encoder's sequences (the UNet's input) and, given a CLIP reward, the largest and mean cosine
    of its text embeddings."""
    out = {}
    for kind in KINDS:
        pairs = minimal_pairs(kind)
        difference = sequence_difference(model.encode_prompts, pairs)
        out[kind] = {"pairs": len(pairs), "t2i_difference_min": float(difference.min()),
                     "t2i_difference_mean": float(difference.mean())}
        if clip_reward is not None:
            cosine = clip_text_cosine(clip_reward.text_embeddings, pairs)
            out[kind] |= {"clip_cosine_max": float(cosine.max()), "clip_cosine_mean": float(cosine.mean())}
    return out


def unet_loss_logs(build_dir: Path) -> list[Path]:
    """Every UNet phase's loss log in training order, where `train_world_t2i` writes them."""
    return ([build_dir / f"{phase.stage}_loss.jsonl" for phase in T2I]
            + [build_dir / phase.stage / f"{phase.stage}_loss.jsonl" for phase in T2I_RELATIONS])


def plot_losses(build_dir: Path, path: Path) -> None:
    """The UNet's phases one after another (steps counted across them), and the CLIP's first phase."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    panels = {"t2i": unet_loss_logs(build_dir), "clip": [build_dir / "clip_loss.jsonl"]}
    for ax, (name, logs) in zip(axes, panels.items(), strict=True):
        offset, found = 0, [log for log in logs if log.is_file()]
        for log in found:
            rows = [json.loads(line) for line in log.read_text().splitlines()]
            ax.plot([offset + r["step"] for r in rows], [r["loss"] for r in rows], lw=0.8,
                    label=log.name.removesuffix("_loss.jsonl"))
            offset += rows[-1]["step"] if rows else 0
        ax.set_title(f"world {name} pre-training loss")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if len(found) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(model, clip_reward, out_dir: Path, build_dir: Path | None = None, **kwargs) -> dict:
    """Evaluate train and test splits, write report.md / report.json / grids / loss plot; returns the numbers."""
    out_dir.mkdir(parents=True, exist_ok=True)
    numbers: dict = {"settings": kwargs}
    lines = ["# World quality report", "",
             "| split | category | prompts | images | oracle accuracy | oracle score | CLIP Spearman |",
             "|---|---|---|---|---|---|---|"]
    for split in ("test", "train"):
        results = evaluate_world(model, clip_reward, split=split, **kwargs)
        numbers[split] = {"clip_spearman_pooled": results.pop("clip_spearman_pooled")}
        for category, row in results.items():
            images, rows = row.pop("images_tensor"), row.pop("prompt_rows")
            numbers[split][category] = row
            lines.append(f"| {split} | {category} | {row['prompts']} | {row['images']} | {row['accuracy']:.3f} | "
                         f"{row['score']:.3f} | {row['clip_spearman']:.3f} |")
            if split == "test":
                sample_grid(images[:64], rows[:64], columns=8).save(out_dir / f"samples_{category}.png")
        lines.append(f"| {split} | all (pooled) | | | | | {numbers[split]['clip_spearman_pooled']:.3f} |")
    renders_rng = np.random.default_rng(1)
    specs = [s for s in all_specs() if s.split == "test"]
    picks = [specs[i] for i in renders_rng.choice(len(specs), size=256, replace=False)]
    renders = render_batch(picks, renders_rng)
    numbers["retrieval_renders"] = caption_retrieval(clip_reward, renders, [s.prompt for s in picks])
    lines += ["", f"Caption retrieval among {NEGATIVES} attribute-swapped captions, 256 test-split renders: "
                  f"{numbers['retrieval_renders']:.3f}"]
    numbers["separation"] = encoder_separation(model, clip_reward)
    lines += ["", "Minimal pairs (prompts differing only in relation direction, colour binding or count):", "",
              "| pairs differ in | pairs | text-to-image encoder: smallest / mean relative difference | "
              "world CLIP text: largest / mean cosine |", "|---|---|---|---|"]
    lines += [f"| {kind} | {row['pairs']} | {row['t2i_difference_min']:.3f} / {row['t2i_difference_mean']:.3f} | "
              f"{row['clip_cosine_max']:.4f} / {row['clip_cosine_mean']:.4f} |"
              for kind, row in numbers["separation"].items()]
    if build_dir is not None:
        plot_losses(build_dir, out_dir / "losses.png")
        lines += ["", "![losses](losses.png)"]
    lines += [""] + [f"![{c}](samples_{c}.png)" for c in CATEGORIES]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    (out_dir / "report.json").write_text(json.dumps(numbers, indent=2))
    return numbers


def main(argv: list[str] | None = None) -> None:
    from alignlab.rewards.clip import ClipScore
    from alignlab.world.clip import CHECKPOINT, NAME
    from alignlab.world.model import build_world

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="directory with the world weights (default: shipped)")
    parser.add_argument("--out", default="world_build/report")
    parser.add_argument("--build-dir", default="world_build", help="where the loss logs are")
    parser.add_argument("--samples-per-prompt", type=int, default=8)
    parser.add_argument("--per-category", type=int, default=24)
    parser.add_argument("--num-steps", type=int, default=10)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    args = parser.parse_args(argv)
    weights = Path(args.weights) if args.weights else None
    model = build_world(args.weights)
    clip = ClipScore(NAME, str((weights / CHECKPOINT.name) if weights else CHECKPOINT), batch_size=256)
    torch.manual_seed(0)
    write_report(model, clip, Path(args.out), Path(args.build_dir), per_category=args.per_category,
                 samples_per_prompt=args.samples_per_prompt, num_steps=args.num_steps,
                 guidance_scale=args.guidance_scale)
    print((Path(args.out) / "report.md").read_text())


if __name__ == "__main__":
    main()
