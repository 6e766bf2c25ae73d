"""Does the default job learn on the gold metric? Runs `python -m alignlab.run method=<m> reward=<r> seed=<s>` for
each method and seed, then scores the final and the pre-trained weights on the same fixed noise, 32 images per
prompt, on the train and the held-out test prompts (`python -m alignlab.evaluate ... samples_per_prompt=32`, with
and without `--base`), and prints strict oracle accuracy before -> after per run (docs/world.md, world v2 gate 3).

    python experiments/default_job.py --out <dir> [--methods ddpo,b2diffurl] [--seeds 0,1,2] [--reward clip]
                                      [-- key=value ...]      # extra overrides for every run

One process at a time (two torch processes on 2 cores slow each other 10-20x). Reruns skip finished runs and
evaluations, so an interrupted measurement continues; the pre-trained weights are evaluated once per seed and
split and set of extra overrides (<out>/base-<reward>-seed<s>-<split>-<overrides hash>.json), as every method
starts from them on the same noise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

SPLITS = ("train", "test")


def call(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", *args], check=True)
    return time.perf_counter() - start


def overrides_key(extra: list[str]) -> str:
    """A short name for the extra overrides: the pre-trained weights' evaluation is shared only by runs that
    give the same ones (model.weights or prompts.* change what the base scores)."""
    return hashlib.sha256("\n".join(extra).encode()).hexdigest()[:8]


def measure(run_dir: Path, method: str, reward: str, seed: int, extra: list[str]) -> dict:
    seconds = None
    if not (run_dir / "lora").is_dir():
        seconds = call(["alignlab.run", f"method={method}", f"reward={reward}", f"seed={seed}",
                        f"hydra.run.dir={run_dir}", "logger=csv", *extra])
    result = {"run": run_dir.name, "run_seconds": seconds}
    for split in SPLITS:
        for base in (False, True):
            name = f"x32_{split}" + ("_base" if base else "")
            path = run_dir / "eval" / f"{name}.json"
            shared = run_dir.parent / f"base-{reward}-seed{seed}-{split}-{overrides_key(extra)}.json"
            if not path.is_file() and base and shared.is_file():
                path.parent.mkdir(exist_ok=True)
                shutil.copy(shared, path)
            if not path.is_file():
                call(["alignlab.evaluate", f"run_dir={run_dir}", f"split={split}", "samples_per_prompt=32",
                      "batch_size=64", f"name={name}", *(["--base"] if base else [])])
            if base and not shared.is_file():
                shutil.copy(path, shared)
            result[name] = json.loads(path.read_text())["oracle_accuracy"]
    return result


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", default="ddpo,b2diffurl")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--reward", default="clip")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    rows = []
    for method in args.methods.split(","):
        for seed in map(int, args.seeds.split(",")):
            rows.append(measure(args.out / f"{method}-{args.reward}-seed{seed}", method, args.reward, seed, extra))
            row = rows[-1]
            print(f"{row['run']:28s} " + "  ".join(
                f"{split} {row[f'x32_{split}_base']:.3f} -> {row[f'x32_{split}']:.3f} "
                f"({row[f'x32_{split}'] - row[f'x32_{split}_base']:+.3f})" for split in SPLITS)
                  + (f"  run {row['run_seconds'] / 60:.1f} min" if row["run_seconds"] else ""), flush=True)
    (args.out / "summary.json").write_text(json.dumps({"extra": extra, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
