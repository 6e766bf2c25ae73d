"""`make bench`: speed and memory as RATIOS to the UNet's own cost, measured side by side.

Sampling cannot beat N steps × one CFG UNet call, and an update cannot beat the UNet forward +
backward it needs; so each figure divides alignlab's time by that bound, measured in the same
process on the same model and inputs (robust on a noisy shared machine). Writes bench/results.json.

    python -m alignlab.benchmarks.speed [--models world,sd15] [--repeats 3] [--out bench/results.json]
    python -m alignlab.benchmarks.speed --models sd15,sd21 --latent 64 --device cuda --dtype float16 --skip-methods
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

import alignlab  # noqa: F401
from alignlab.benchmarks.memory import peaks
from alignlab.objectives.ppo_clip import ppo_clip_loss
from alignlab.samplers.ddim import DDIMSampler, guided_noise
from alignlab.models import add_lora, build_tiny
from alignlab.models.diffusion import DiffusionModel, torch_dtype
from alignlab.models.speed import configure_speed
from alignlab.world import build_world


SD_UNETS = {  # the UNet configs of SD 1.5 and SD 2.1 (what differs from diffusers' defaults)
    "sd15": {"cross_attention_dim": 768, "attention_head_dim": 8},
    "sd21": {"cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20), "use_linear_projection": True},
}


def sd_shaped(arch: str, latent: int = 16) -> torch.nn.Module:
    """SD 1.5's or 2.1's UNet architecture with random weights at `latent`² latents (no download)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=latent, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                                **SD_UNETS[arch])


def bench_model(name: str, latent: int = 16, dtype: str = "float32", device: str = "cpu", **speed) -> DiffusionModel:
    """`tiny` (model=tiny), `world` (the shipped world model), `sd15` or `sd21` (SD's UNet, random weights,
    `latent`² latents) with frozen weights in `dtype`, LoRA as in training, on `device`; `speed`: the model
    config's speed options (alignlab.models.speed)."""
    if name == "world":
        model = build_world()
    else:
        model = build_tiny()
        if name in SD_UNETS:
            model = DiffusionModel(sd_shaped(name, latent), model.vae, model.text_encoder, model.tokenizer,
                                   model.scheduler, latent * 2)
    model.to(torch_dtype(dtype))
    add_lora(model)
    configure_speed(model.unet, **speed)
    return model.to(device)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function, calls alternating so machine load hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if torch.cuda.is_initialized():
                torch.cuda.synchronize()  # GPU work is asynchronous: wait for it
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def case_functions(model: DiffusionModel, batch: int, steps: int) -> dict[str, Callable[[], object]]:
    """The timed calls on one model, each under the model's autocast as in a run: `steps` bare CFG UNet calls
    ("calls"), a rollout, a bare UNet forward + backward ("fwd_bwd") and a PPO per-timestep update."""
    unet, scheduler, device = model.unet, model.scheduler, next(model.unet.parameters()).device
    gen = torch.Generator().manual_seed(0)
    width = unet.config.cross_attention_dim
    cond, neg = (torch.randn(rows, 77, width, generator=gen).to(device) for rows in (batch, 1))
    shape = model.latent_shape(batch)
    x, adv = torch.randn(shape, generator=gen).to(device), torch.randn(batch, generator=gen).to(device)
    sampler = DDIMSampler(num_steps=steps, guidance_scale=5.0, progress=False)
    t, step = torch.tensor(501), torch.zeros(batch, dtype=torch.long, device=device)

    def rollout():
        return sampler.sample(unet, scheduler, cond, neg, shape, torch.Generator().manual_seed(1))

    with model.autocast():
        traj = rollout()

    def calls():
        with torch.no_grad():
            for _ in range(steps):
                guided_noise(unet, x, t, cond, neg, 5.0)

    def fwd_bwd():
        guided_noise(unet, x, t, cond, neg, 5.0).float().square().mean().backward()
        unet.zero_grad(set_to_none=True)

    def update():
        logp = sampler.step_log_prob(unet, scheduler, traj, step, neg)
        ppo_clip_loss(logp, traj.log_probs[:, 0], adv, 1e-4, 5.0).loss.backward()
        unet.zero_grad(set_to_none=True)

    def autocast(fn):
        def run():
            with model.autocast():
                fn()
        return run

    return {name: autocast(fn) for name, fn in
            (("calls", calls), ("rollout", rollout), ("fwd_bwd", fwd_bwd), ("update", update))}


def run_case(name: str, batch: int, steps: int, repeats: int, latent: int, **options) -> dict:
    """Rollout and update efficiency of one model; `options`: bench_model's dtype, device and speed options."""
    model = bench_model(name, latent, **options)
    fns = case_functions(model, batch, steps)
    t, mem = interleaved(fns, repeats), peaks({key: fns[key] for key in ("rollout", "update")})
    call, roll, fwd_bwd, update = t["calls"] / steps, t["rollout"], t["fwd_bwd"], t["update"]
    return {
        "model": name, "batch": batch, "steps": steps, "latent": list(model.latent_shape(1)[1:]), **options,
        "unet_call_s": call, "rollout_s": roll, "rollout_efficiency": roll / (steps * call),
        "unet_fwd_bwd_s": fwd_bwd, "update_s": update, "update_efficiency": update / fwd_bwd,
        "rollout_peak_mib": mem["rollout"], "update_peak_mib": mem["update"],
    }


def method_cases(batch: int, steps: int, repeats: int) -> dict:
    """B²-DiffuRL's shared-prefix saving and D-Fusion's fused-target cost on the world model."""
    from alignlab.core.attention import capture_layers
    from alignlab.core.branching import branch_sample
    from alignlab.core.fusion import KVFusion, fused_targets, self_attention_layers
    from alignlab.core.token_spans import Item, ItemBatch

    model = bench_model("world")
    unet, scheduler = model.unet, model.scheduler
    prompts = ["a red circle"] * batch
    cond, neg = model.encode_prompts(prompts), model.encode_prompts([""])
    sampler = DDIMSampler(num_steps=steps, guidance_scale=5.0, progress=False)
    k, split = 5, steps // 2

    def plain(rows):
        embeds = cond[:1].expand(rows, -1, -1)
        return sampler.sample(unet, scheduler, embeds, neg, model.latent_shape(rows), torch.Generator().manual_seed(0))

    def branched():
        branch_sample(sampler, unet, scheduler, cond, neg, model.latent_shape(batch), torch.Generator().manual_seed(0),
                      split, k)

    traj = plain(batch)
    items = ItemBatch.build(model.tokenizer, prompts, [[Item("circle", threshold=0.0)]] * batch)
    capture, size = capture_layers(unet, model.latent_shape(1)[-2:])
    fusion = KVFusion(self_attention_layers(unet))

    def fused():
        replay = [torch.Generator().manual_seed(i) for i in range(batch)]
        fused_targets(sampler, unet, scheduler, traj, traj, neg, replay, items, (0, steps), fusion, capture, size)

    fns = {"plain_bk": lambda: plain(batch * k), "branched": branched, "plain_b": lambda: plain(batch), "fused": fused}
    t, mem = interleaved(fns, repeats), peaks(fns)
    rows = (steps - split + k * split) / (k * steps)
    return {"model": "world", "batch": batch, "steps": steps, "branches": k, "split_step": split,
            "b2_branched_over_plain": t["branched"] / t["plain_bk"], "b2_expected_row_ratio": rows,
            "b2_peak_memory_ratio": mem["branched"] / mem["plain_bk"],
            "dfusion_fused_over_plain": t["fused"] / t["plain_b"],
            "dfusion_peak_memory_ratio": mem["fused"] / mem["plain_b"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="world,sd15", help="of tiny, world, sd15, sd21")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latent", type=int, default=16, help="latent side of the SD-shaped UNets (64: 512 px)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", help="frozen weights: float32, float16 or bfloat16")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--compile", default="false", help="false, true (inductor) or a torch.compile backend")
    parser.add_argument("--skip-methods", action="store_true", help="leave out the world-model method figures")
    parser.add_argument("--quick", action="store_true",
                        help="the smallest sizes (batch 1-2, 4 steps): checks that it runs, figures not to quote")
    parser.add_argument("--out", default="bench/results.json")
    args = parser.parse_args(argv)
    options = {"dtype": args.dtype, "device": args.device, "gradient_checkpointing": args.gradient_checkpointing,
               "compile": compile_option(args.compile)}
    cases = []
    for name in args.models.split(","):
        small = args.quick or (name in SD_UNETS and args.device == "cpu")  # SD's UNet on a CPU: the smallest grid
        for batch, steps in [(1, 4), (2, 4)] if small else [(4, 10), (8, 10), (4, 20)]:
            row = run_case(name, batch, steps, args.repeats, args.latent, **options)
            cases.append(row)
            print(f"{name:5s} batch {batch:2d} steps {steps:3d}: rollout {row['rollout_s']:7.3f}s "
                  f"(x{row['rollout_efficiency']:.3f} of N UNet calls), update {row['update_s']:6.3f}s "
                  f"(x{row['update_efficiency']:.3f} of fwd+bwd), peak memory rollout {row['rollout_peak_mib']:.0f} / "
                  f"update {row['update_peak_mib']:.0f} MiB")
    methods = {}
    if not args.skip_methods:
        methods = method_cases(*((2, 4) if args.quick else (4, 10)), args.repeats)
        print(f"B²-DiffuRL: branched sampling {methods['b2_branched_over_plain']:.3f}x the time of the same images "
              f"unbranched (rows {methods['b2_expected_row_ratio']:.3f}x; peak memory "
              f"x{methods['b2_peak_memory_ratio']:.3f}); "
              f"D-Fusion: a fused target {methods['dfusion_fused_over_plain']:.3f}x an ordinary sample (goal <= 2.1; "
              f"peak memory x{methods['dfusion_peak_memory_ratio']:.3f})")
    write_results(args.out, cases=cases, methods=methods)


def compile_option(text: str) -> bool | str:
    """A --compile argument as model.compile takes it: false, true (inductor) or a backend name."""
    return {"false": False, "true": True}.get(text, text)


def write_results(path: str, **figures) -> None:
    """A bench's JSON: its figures with the date, device, torch threads and version they were measured with."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    out.write_text(json.dumps({"date": str(date.today()), "device": device, "threads": torch.get_num_threads(),
                               "torch": torch.__version__, **figures}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
