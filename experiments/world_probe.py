"""Cheap probes of a candidate world before a full rebuild (docs/world.md, "World v2"): how far apart the
text encoders put the grammar's minimal pairs, how fast candidate UNets train, how well a (partly) trained
model draws each category.

    python experiments/world_probe.py separation [--weights DIR]          # the text encoders (gate 6)
    python experiments/world_probe.py text --out DIR [--steps 400]        # pre-train a text encoder, then measure it
    python experiments/world_probe.py speed                                # s per batch-64 step of candidate UNets
    python experiments/world_probe.py clean --out DIR [--steps 1500]  # text encoder + clean UNet
    python experiments/world_probe.py accuracy --weights DIR [--split test] [--per-category 6] [--num-steps 10]
                                      [--categories ...] [--seed 0] [--per-prompt] [--prompts "<prompt>" ...]
    python experiments/world_probe.py clip-edits [--weights DIR] [--split test]  # the CLIP on each kind of edit
    python experiments/world_probe.py clip-more --out DIR [--steps 3000]  # continue the shipped CLIP
    python experiments/world_probe.py unet-more --out DIR [--steps 600] [--min-offset 10] [--weights START]
                                      [--caption-noise CATEGORY=RATE ...]  # continue a UNet
    python experiments/world_probe.py relations [--weights DIR] [--split test]  # relations drawn and rewarded
    python experiments/world_probe.py fusion-gap --out RUN_DIR             # a method=dfusion run's targets (gate 4)

`clean` resumes from DIR's checkpoints, so rerunning it with more --steps continues the same run (the cosine
schedule is then the longer one's from the step it stopped at: not the same as a fresh longer run). It writes
DIR/weights_clean_<steps>, which `accuracy` and alignlab's `model.weights=` read.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

import alignlab  # noqa: F401  (before open_clip / diffusers)
from alignlab.world.grammar import CATEGORIES


def print_separation(model, clip=None) -> None:
    from alignlab.world.report import encoder_separation

    for kind, row in encoder_separation(model, clip).items():
        line = f"{kind:12s} {row['pairs']:4d} pairs  text-to-image difference min {row['t2i_difference_min']:.3f} " \
               f"mean {row['t2i_difference_mean']:.3f}"
        if clip:
            line += f"  | CLIP cosine max {row['clip_cosine_max']:.4f} mean {row['clip_cosine_mean']:.4f}"
        print(line)


def separation(weights: str | None) -> None:
    from alignlab.rewards.clip import ClipScore
    from alignlab.world.clip import CHECKPOINT, NAME
    from alignlab.world.model import build_world

    clip_file = Path(weights) / CHECKPOINT.name if weights else CHECKPOINT
    print_separation(build_world(weights), ClipScore(NAME, str(clip_file)) if clip_file.is_file() else None)


def text(out: Path, steps: int) -> None:
    from alignlab.world.model import assemble, world_components
    from alignlab.world.text_training import TEXT, train_text_encoder

    unet, encoder = world_components()
    model = assemble(unet, encoder)
    start = time.perf_counter()
    train_text_encoder(encoder, model.tokenizer, out, replace(TEXT, steps=steps))
    print(f"{steps} steps in {time.perf_counter() - start:.0f} s")
    print_separation(model)


def speed() -> None:
    from diffusers import UNet2DConditionModel

    from alignlab.world.model import UNET

    attention = dict(down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3)
    candidates = {
        "world v1 (attention at 8x8, 4x4)": {**UNET, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D",
                                                                           "CrossAttnDownBlock2D"),
                                             "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                                                "UpBlock2D")},
        "attention at 16x16 too (v2)": {**UNET, **attention},
        "two levels (64, 128), attention at both": {**UNET, "block_out_channels": (64, 128),
                                                    "down_block_types": ("CrossAttnDownBlock2D",) * 2,
                                                    "up_block_types": ("CrossAttnUpBlock2D",) * 2},
    }
    torch.manual_seed(0)
    latents, context = torch.randn(64, 12, 16, 16), torch.randn(64, 77, 64)
    timesteps = torch.randint(0, 1000, (64,))
    for name, config in candidates.items():
        unet = UNet2DConditionModel(**config)
        optimizer = torch.optim.AdamW(unet.parameters())
        times = []
        for _ in range(6):
            start = time.perf_counter()
            unet(latents, timesteps, context).sample.square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - start)
        params = sum(p.numel() for p in unet.parameters()) / 1e6
        print(f"{name:42s} {params:.2f} M parameters  {sorted(times)[2]:.2f} s per step (median of 6)")


def clean(out: Path, steps: int) -> None:
    from alignlab.world.t2i_training import T2I, train_t2i

    weights = train_t2i(out, (replace(T2I[0], loop=replace(T2I[0].loop, steps=steps)),))
    shutil.copytree(weights, out / f"weights_clean_{steps}", dirs_exist_ok=True)
    print(f"wrote {out / f'weights_clean_{steps}'}")


def unet_more(out: Path, steps: int, min_offset: int, start: str | None, caption_noise: dict[str, float]) -> None:
    """Continue the UNet of `start` (default: the shipped one) for `steps` on captions whose position renders
    hold the relation by at least `min_offset` px (render.MIN_OFFSET = 4 in the first stage): clean captions ask
    whether the UNet follows relations it sees plainly; `caption_noise` (category -> rate) makes a capable
    model sample the wrong composition at known rates, as pre-training's second phase does.
    model.weights=DIR/weights runs a job on the result."""
    from alignlab.world.model import WEIGHTS
    from alignlab.world.t2i_training import T2I_RELATIONS, train_t2i

    wide, noisy = T2I_RELATIONS  # the build's later stages, at this probe's steps, noise and offset
    like = noisy if caption_noise else wide
    phase = replace(like, loop=replace(like.loop, steps=steps), caption_noise=caption_noise, min_offset=min_offset)
    weights = train_t2i(out, (phase,), start=Path(start) if start else WEIGHTS)
    print(f"wrote {weights}")


def clip_more(out: Path, steps: int) -> None:
    """Continue the shipped world CLIP for `steps` more steps at its second phase's settings (is the relation
    accuracy still rising?); reward.pretrained=DIR/weights/world_clip.safetensors makes a run reward with it."""
    from alignlab.world.clip import CHECKPOINT, CLIP_RELATIONS, train_clip

    print(f"wrote {train_clip(out, (('clip_more', replace(CLIP_RELATIONS, steps=steps)),), start=CHECKPOINT)}")


def accuracy(weights: str, split: str, per_category: int, samples: int, num_steps: int, eta: float,
             categories: list[str], seed: int, per_prompt: bool, listed: list[str] | None = None) -> None:
    """Strict oracle accuracy per category (`per_prompt`: and per prompt) and, for prompts with colours, with
    shapes forgiven; `listed`: of these world prompts, each prompt's, instead of the split's."""
    from alignlab.samplers.ddim import DDIMSampler
    from alignlab.eval.evaluate import evaluate_prompts
    from alignlab.world.grammar import spec_of
    from alignlab.world.model import build_world
    from alignlab.world.oracle import OracleReward
    from alignlab.world.report import report_prompts

    model = build_world(weights)
    sampler = DDIMSampler(num_steps=num_steps, guidance_scale=3.0, eta=eta, progress=False)
    if listed:
        per_prompt, categories, split = True, list(CATEGORIES), "listed"
        groups = {c: [p for p in listed if spec_of(p).category == c] for c in CATEGORIES}
    else:
        groups = report_prompts(split, per_category)
    for category, prompts in groups.items():
        if category not in categories or not prompts:
            continue
        result = evaluate_prompts(model, sampler, OracleReward(), prompts, samples, 64, seed)
        scores = torch.tensor(result["rewards"])
        if per_prompt:
            for prompt, row in zip(prompts, scores.view(len(prompts), samples), strict=True):
                print(f"{spec_of(prompt).split:6s} {category:14s} {prompt:48s} strict accuracy "
                      f"{(row == 1).float().mean():.3f}")
        forgiven = [shape_forgiven(spec_of(p), image) for p, image in zip(result["prompts"], result["images"],
                                                                              strict=True)]
        line = f"{split} {category:14s} {len(scores):4d} images  strict accuracy {(scores == 1).float().mean():.3f}" \
               f"  oracle score {scores.mean():.3f}"
        if None not in forgiven:
            line += f"  | shapes forgiven: strict accuracy {sum(forgiven) / len(forgiven):.3f}"
        print(line)


def clip_edits(weights: str | None, split: str, scenes: int = 400) -> None:
    """How often the world CLIP scores a render's own caption above its hard negative of each kind of edit
    (relation reversed, colours swapped, count, colour, shape), per category: which distinction it misses."""
    import numpy as np

    from alignlab.rewards.clip import ClipScore
    from alignlab.world.clip import CHECKPOINT, NAME, _edited, _edits
    from alignlab.world.grammar import all_specs
    from alignlab.world.render import render_batch

    reward = ClipScore(NAME, str(Path(weights) / CHECKPOINT.name) if weights else str(CHECKPOINT))
    rng = np.random.default_rng(0)
    specs = [s for s in all_specs() if s.split == split]
    picks = [specs[i] for i in rng.choice(len(specs), min(scenes, len(specs)), replace=False)]
    images = render_batch(picks, rng)
    rows, negatives = [], []  # (scene, category, edit) of each hard negative that differs from its caption
    for index, spec in enumerate(picks):
        for edit in _edits(spec):
            negative = _edited(spec, edit, rng)
            if negative.prompt != spec.prompt:
                rows.append((index, spec.category, edit))
                negatives.append(negative.prompt)
    scenes = torch.tensor([index for index, _, _ in rows])
    own = reward(images[scenes], [picks[index].prompt for index, _, _ in rows])  # one batched call each
    other = reward(images[scenes], negatives)
    wins: dict[tuple[str, str], list[bool]] = {}
    for (_, category, edit), won in zip(rows, (own > other).tolist(), strict=True):
        wins.setdefault((category, edit), []).append(won)
    for (category, edit), won in sorted(wins.items()):
        print(f"{category:14s} {edit:12s} {np.mean(won):.3f}  ({len(won)} scenes)")


def relations(weights: str | None, split: str, seed: int, prompts: int = 24, samples: int = 24) -> None:
    """Position prompts drawn with DDIM 10 steps: how many samples hold both objects and nothing else, how
    many of those put them in the asked relation (0.5: chance), and how often the world CLIP then scores the
    caption above the one with the relation reversed (whether the reward can tell the model's relations apart)."""
    from alignlab.eval.evaluate import evaluate_prompts
    from alignlab.rewards.clip import ClipScore
    from alignlab.samplers.ddim import DDIMSampler
    from alignlab.world.clip import CHECKPOINT, NAME
    from alignlab.world.contrasts import reversed_relation
    from alignlab.world.grammar import all_specs, evenly_spread, spec_of
    from alignlab.world.model import build_world
    from alignlab.world.oracle import OracleReward, check

    chosen = evenly_spread([s.prompt for s in all_specs(["position"]) if s.split == split], prompts)
    sampler = DDIMSampler(num_steps=10, guidance_scale=3.0, eta=1.0, progress=False)
    result = evaluate_prompts(build_world(weights), sampler, OracleReward(), chosen, samples, 64, seed)
    drawn, related = [], []  # indices of samples with both objects and nothing else; relation met there
    for index, (prompt, image) in enumerate(zip(result["prompts"], result["images"], strict=True)):
        spec = spec_of(prompt)
        met = check(spec, image).constraints
        (relation,) = [name for name in met if spec.relation in name]  # the rest: each object, and no other
        if all(value for name, value in met.items() if name != relation):
            drawn.append(index)
            related.append(met[relation])
    images, right = result["images"][drawn], torch.tensor(related)
    captions = [result["prompts"][i] for i in drawn]
    clip = ClipScore(NAME, str(CHECKPOINT))
    prefers = clip(images, captions) > clip(images, [reversed_relation(spec_of(c)).prompt for c in captions])
    print(f"{split}: {len(drawn)} of {len(result['prompts'])} samples hold both objects and nothing else "
          f"({len(drawn) / len(result['prompts']):.3f}); of those, the relation is right in {right.float().mean():.3f}")
    print(f"the world CLIP prefers the caption to its reversed relation in {prefers[right].float().mean():.3f} of "
          f"the right ones and {prefers[~right].float().mean():.3f} of the wrong ones "
          f"(tells them apart in {(prefers == right).float().mean():.3f})")


def shape_forgiven(spec, image) -> bool | None:
    """Whether `image` passes the oracle when every object found in one of the prompt's colours counts as that
    colour's shape: what is left fails on colour, count or relation, not on drawing a shape. None for prompts
    without colours (two_objects), where shape is all there is."""
    from dataclasses import replace as with_fields

    from alignlab.world.oracle import detect, judge

    shape_of = {obj.color: obj.shape for obj in spec.objects}
    if None in shape_of:
        return None
    detections = [with_fields(d, shape=shape_of.get(d.color, d.shape)) for d in detect(image)]
    return judge(spec, detections).passed


def fusion_gap(run_dir: Path) -> None:
    """Gate 4 of world v2, from a `method=dfusion` run's metrics rows: the share of the reward gap between base
    and reference that the fused targets close, mean over rounds, and the range of the fused masks' coverage."""
    import numpy as np

    from alignlab.training.artifacts import read_metrics

    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "reward_target" in r]
    if not rows:
        raise SystemExit(f"{run_dir}/metrics.jsonl has no reward_target rows: not a method=dfusion run")
    reference = np.mean([r["reward_reference"] - r["reward_base"] for r in rows])
    target = np.mean([r["reward_target"] - r["reward_base"] for r in rows])
    masks = [r["mask_fraction"] for r in rows]
    print(f"{len(rows)} rounds: reference - base {reference:+.4f}, target - base {target:+.4f}, "
          f"share closed {target / reference:.3f} (gate >= 0.5); mask coverage {min(masks):.3f}-{max(masks):.3f} "
          f"(mean {np.mean(masks):.3f}; gate 0.10-0.60)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", choices=["separation", "text", "speed", "clean", "accuracy", "clip-edits",
                                          "clip-more", "unet-more", "relations", "fusion-gap"])
    parser.add_argument("--weights", default=None, help="a world weights directory (default: the shipped one)")
    parser.add_argument("--out", type=Path, default=Path("world_build"))
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--per-category", type=int, default=6)
    parser.add_argument("--samples", type=int, default=8, help="images per prompt")
    parser.add_argument("--num-steps", type=int, default=10, help="DDIM steps of the accuracy probe")
    parser.add_argument("--eta", type=float, default=1.0, help="DDIM eta of the accuracy probe (> 0)")
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES), help="the accuracy probe's categories")
    parser.add_argument("--seed", type=int, default=0, help="evaluation noise of the accuracy probe")
    parser.add_argument("--per-prompt", action="store_true", help="the accuracy probe prints every prompt's too")
    parser.add_argument("--prompts", nargs="+", default=None,
                        help="the accuracy probe measures these world prompts (one quoted argument each) instead")
    parser.add_argument("--min-offset", type=int, default=10, help="unet-more's least relation offset in px")
    parser.add_argument("--caption-noise", nargs="+", default=[], metavar="CATEGORY=RATE",
                        help="unet-more's caption noise per category (default: clean captions)")
    args = parser.parse_args()
    if args.probe == "separation":
        separation(args.weights)
    elif args.probe == "text":
        text(args.out, args.steps or 400)
    elif args.probe == "speed":
        speed()
    elif args.probe == "clean":
        clean(args.out, args.steps or 1500)
    elif args.probe == "clip-edits":
        clip_edits(args.weights, args.split)
    elif args.probe == "clip-more":
        clip_more(args.out, args.steps or 3000)
    elif args.probe == "unet-more":
        noise = {category: float(rate) for category, rate in (item.split("=") for item in args.caption_noise)}
        unet_more(args.out, args.steps or 600, args.min_offset, args.weights, noise)
    elif args.probe == "relations":
        relations(args.weights, args.split, args.seed)
    elif args.probe == "fusion-gap":
        fusion_gap(args.out)
    else:
        accuracy(args.weights, args.split, args.per_category, args.samples, args.num_steps, args.eta, args.categories,
                 args.seed, args.per_prompt, args.prompts)


if __name__ == "__main__":
    main()
