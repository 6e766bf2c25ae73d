"""Checkpoints that survive a kill at any moment.

Lightning writes each checkpoint inside an fsspec transaction (a temporary file renamed into place), and
we keep the last `keep` rounds besides last.ckpt. A file that is still unreadable (truncated by a full
disk, cut short by a copy) is skipped with a warning, and the run resumes from the newest one that loads
without unpickling arbitrary objects (`weights_only=True`).
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from alignlab.errors import AlignlabError, ConfigError

log = logging.getLogger("alignlab")
ROUND_FILE = re.compile(r"round-(\d+)\.ckpt")


def round_checkpoints(run_dir: Path, keep: int) -> ModelCheckpoint:
    """checkpoints/round-NNNN.ckpt for the last `keep` rounds, and last.ckpt."""
    if keep < 1:
        raise ConfigError(f"checkpoint.keep must be >= 1, got {keep}")
    return ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="round-{epoch:04d}", auto_insert_metric_name=False,
                           monitor="epoch", mode="max", save_top_k=keep, save_last=True, every_n_epochs=1)


def _readable(path: Path) -> bool:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return "state_dict" in state and "round_index" in state
    except Exception as error:  # truncated zip, bad pickle, wrong type: all mean "not this one"
        warnings.warn(f"{path} is unreadable ({type(error).__name__}): skipped", stacklevel=2)
        return False


def resume_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest readable checkpoint (last.ckpt first, then rounds newest first); None when there is none."""
    rounds = sorted((p for p in checkpoint_dir.glob("round-*.ckpt") if ROUND_FILE.fullmatch(p.name)),
                    key=lambda p: int(ROUND_FILE.fullmatch(p.name)[1]), reverse=True)
    candidates = [p for p in [checkpoint_dir / "last.ckpt", *rounds] if p.is_file()]
    for path in candidates:
        if _readable(path):
            if path != candidates[0]:
                log.warning("resuming from %s: the newer checkpoints are unreadable", path)
            return path
    if candidates:
        raise AlignlabError(f"no readable checkpoint in {checkpoint_dir} (all {len(candidates)} are corrupt): "
                            "move it aside to start over, or set resume=false")
    return None
