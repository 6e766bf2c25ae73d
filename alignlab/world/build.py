"""Rebuild the shapes world from scratch: world CLIP, world text-to-image model, report.

    python -m alignlab.world.build [--out world_build] [--install]     (= make world)

Seeded and resumable: rerun the same command after an interruption and each stage continues from
its last checkpoint (finished stages are skipped). `--install` copies the weights into the package.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from alignlab.world.clip import train_clip
from alignlab.world.model import WEIGHTS
from alignlab.world.t2i_training import train_world_t2i


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="world_build", help="checkpoints, loss logs, weights and report")
    parser.add_argument("--install", action="store_true", help="copy the new weights into alignlab/world/weights")
    parser.add_argument("--skip-report", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    clip_file = train_clip(out)
    weights = train_world_t2i(out)
    shutil.copy2(clip_file, weights / clip_file.name)  # one directory holds the whole world, as the shipped one
    if args.install:
        WEIGHTS.mkdir(exist_ok=True)
        for name in ("unet.safetensors", "text_encoder.safetensors", "unet.json", clip_file.name):
            shutil.copy2(weights / name, WEIGHTS / name)
        print(f"installed the world weights in {WEIGHTS}")
    if not args.skip_report:
        from alignlab.world.report import main as report

        report(["--weights", str(weights), "--out", str(out / "report"), "--build-dir", str(out)])


if __name__ == "__main__":
    main()
