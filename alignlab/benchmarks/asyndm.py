"""AsynDM's cost against synchronous DDIM, measured side by side in one process (goal: rollout <= 1.10x),
and its rollout's peak memory against the synchronous one's.

Per-pixel timesteps add a few gathers per ResNet and one embedding per distinct timestep; dynamic
masks add an explicit attention softmax in the captured layers and a mask update per step. Each
figure is the AsynDM time divided by the synchronous time on the same model and inputs, timed
interleaved (robust on a noisy shared machine).

    python -m alignlab.benchmarks.asyndm [--models world,sd15] [--batch 4] [--steps 10] [--repeats 5]
                                    [--out bench/asyndm.json]
"""

from __future__ import annotations

import argparse

import torch

import alignlab  # noqa: F401
from alignlab.benchmarks.speed import bench_model, interleaved, write_results
from alignlab.benchmarks.memory import peaks
from alignlab.samplers.asyn import AsynSampler
from alignlab.samplers.ddim import DDIMSampler
from alignlab.core.token_spans import Item, ItemBatch
from alignlab.models.tokenizer import clip_tokenizer

PROMPTS = [("a cat eating a sandwich", ["cat", "sandwich"]), ("a dog playing basketball", ["dog", "basketball"])]


def run_case(name: str, batch: int, steps: int, repeats: int, latent: int) -> dict:
    model = bench_model(name, latent)
    unet, scheduler, width = model.unet, model.scheduler, model.unet.config.cross_attention_dim
    latent_shape = model.latent_shape(1)[1:]
    gen = torch.Generator().manual_seed(0)
    cond, neg = torch.randn(batch, 77, width, generator=gen), torch.randn(1, 77, width, generator=gen)
    shape = (batch, *latent_shape)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    items = ItemBatch.build(clip_tokenizer(), [p for p, _ in prompts],
                            [[Item(w, 0.5) for w in ws] for _, ws in prompts])
    sync, asyn = DDIMSampler(steps, progress=False), AsynSampler(steps, progress=False)

    def rollout(sampler, **kwargs):
        return sampler.sample(unet, scheduler, cond, neg, shape, torch.Generator().manual_seed(1), **kwargs)

    trajectories = {"sync": rollout(sync), "asyn": rollout(asyn, items=items)}
    step = torch.full((batch,), steps // 2)

    def update(sampler, key):
        sampler.step_log_prob(unet, scheduler, trajectories[key], step, neg).mean().backward()
        unet.zero_grad(set_to_none=True)

    fns = {
        "sync": lambda: rollout(sync),
        "asyn_dm": lambda: rollout(asyn, items=items, variant="dm"),
        "asyndm": lambda: rollout(asyn, items=items),
        "sync_update": lambda: update(sync, "sync"),
        "asyn_update": lambda: update(asyn, "asyn"),
    }
    t, mem = interleaved(fns, repeats), peaks({key: fns[key] for key in ("sync", "asyndm")})
    return {"model": name, "batch": batch, "steps": steps, "latent": list(latent_shape), "sync_rollout_s": t["sync"],
            "per_pixel_ratio": t["asyn_dm"] / t["sync"], "asyndm_ratio": t["asyndm"] / t["sync"],
            "update_ratio": t["asyn_update"] / t["sync_update"], "sync_peak_mib": mem["sync"],
            "asyndm_peak_mib": mem["asyndm"], "peak_memory_ratio": mem["asyndm"] / mem["sync"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="world", help="of tiny, world, sd15")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--latent", type=int, default=16, help="latent side of the SD-shaped UNet")
    parser.add_argument("--out", default="bench/asyndm.json")
    args = parser.parse_args(argv)
    cases = []
    for name in args.models.split(","):
        row = run_case(name, args.batch, args.steps, args.repeats, args.latent)
        cases.append(row)
        print(f"{name:5s} batch {row['batch']} steps {row['steps']} latent {row['latent']}: sync rollout "
              f"{row['sync_rollout_s']:.3f}s | per-pixel timesteps x{row['per_pixel_ratio']:.3f} | "
              f"AsynDM (dynamic masks) x{row['asyndm_ratio']:.3f} | update x{row['update_ratio']:.3f} | peak memory "
              f"x{row['peak_memory_ratio']:.3f} ({row['asyndm_peak_mib']:.1f} / {row['sync_peak_mib']:.1f} MiB)")
    write_results(args.out, cases=cases)


if __name__ == "__main__":
    main()
