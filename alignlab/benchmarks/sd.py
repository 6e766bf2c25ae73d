"""`make bench-gpu`: samples/s and peak memory of SD-scale rollouts and updates across the speed options.

SD 1.5's and 2.1's UNets with random weights (512 px: 64² latents), LoRA as in training, in every variant of
frozen dtype (float16, bfloat16) × gradient checkpointing (off, on) × torch.compile (off, on). Each variant is
its own UNet; all are timed interleaved in one process, so the columns compare side by side. A rollout is
`--steps` CFG steps of `--batch` images; an update is one PPO per-timestep update of `--batch` images (where
gradient checkpointing acts: a rollout takes no gradients, so checkpointed variants have no rollout column).
Peak memory is CUDA's maximum allocated during the call (resident memory on a CPU).

    python -m alignlab.benchmarks.sd [--models sd15,sd21] [--latent 64] [--batch 4] [--steps 10] [--repeats 5]
                                [--device cuda] [--compile true] [--out bench/sd.json]
"""

from __future__ import annotations

import argparse
import itertools

import alignlab  # noqa: F401
from alignlab.benchmarks.speed import bench_model, case_functions, compile_option, interleaved, write_results
from alignlab.benchmarks.memory import peaks

DTYPES = ("float16", "bfloat16")


def variant_name(dtype: str, checkpointing: bool, compiled: bool) -> str:
    return f"{dtype}{' +ckpt' if checkpointing else ''}{' +compile' if compiled else ''}"


def run_grid(name: str, latent: int, batch: int, steps: int, repeats: int, device: str, compile: bool | str,
             dtypes: tuple[str, ...] = DTYPES) -> list[dict]:
    variants = list(itertools.product(dtypes, (False, True), (False, True)))
    fns = {}
    for dtype, checkpointing, compiled in variants:
        model = bench_model(name, latent, dtype, device, gradient_checkpointing=checkpointing,
                            compile=compile if compiled else False)
        calls = case_functions(model, batch, steps)
        key = variant_name(dtype, checkpointing, compiled)
        if not checkpointing:
            fns[f"{key}/rollout"] = calls["rollout"]
        fns[f"{key}/update"] = calls["update"]
    times, memory = interleaved(fns, repeats), peaks(fns)
    rows = []
    for dtype, checkpointing, compiled in variants:
        key = variant_name(dtype, checkpointing, compiled)
        rollout = f"{key}/rollout"
        rows.append({
            "model": name, "latent": latent, "batch": batch, "steps": steps, "dtype": dtype,
            "gradient_checkpointing": checkpointing, "compile": compile if compiled else False,
            "rollout_s": times.get(rollout), "rollout_peak_mib": memory.get(rollout),
            "rollout_images_per_s": batch / times[rollout] if rollout in times else None,
            "update_s": times[f"{key}/update"], "update_images_per_s": batch / times[f"{key}/update"],
            "update_peak_mib": memory[f"{key}/update"],
        })
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sd15,sd21", help="of sd15, sd21 (tiny, world: quick checks)")
    parser.add_argument("--latent", type=int, default=64, help="latent side (64: 512 px)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compile", default="true", help="the compiled variants' backend: true (inductor) or a name")
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--out", default="bench/sd.json")
    args = parser.parse_args(argv)
    compile = compile_option(args.compile)
    rows = []
    for name in args.models.split(","):
        for row in run_grid(name, args.latent, args.batch, args.steps, args.repeats, args.device, compile,
                            tuple(args.dtypes.split(","))):
            rows.append(row)
            rollout = (f"rollout {row['rollout_images_per_s']:6.2f} img/s, peak {row['rollout_peak_mib']:7.0f} MiB"
                       if row["rollout_s"] is not None else "(rollout: as without checkpointing)").ljust(38)
            print(f"{name} {variant_name(row['dtype'], row['gradient_checkpointing'], bool(row['compile'])):26s} "
                  f"{rollout} | update {row['update_images_per_s']:6.2f} img/s, peak {row['update_peak_mib']:7.0f} MiB")
    write_results(args.out, cases=rows)


if __name__ == "__main__":
    main()
