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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Resumable:
    """A checkpoint to resume from: where it is, how many rounds it completed, and the shapes of the weights
    it holds (the trainable ones: RLMethod.on_save_checkpoint)."""

    path: Path
    rounds: int
    shapes: dict[str, tuple[int, ...]]

    def check_fits(self, method) -> None:
        """A config that trains other weights (another LoRA rank or targets, full fine-tuning instead of LoRA)
        would fail deep inside Lightning's loading of the weights or of the optimizer state."""
        here = {name: tuple(p.shape) for name, p in method.named_parameters() if p.requires_grad}
        differing = sorted(name for name in here.keys() | self.shapes.keys() if here.get(name) != self.shapes.get(name))
        if differing:
            raise ConfigError(
                f"{self.path} holds other trainable weights than this config trains ({len(differing)} of "
                f"{len(here | self.shapes)} differ, e.g. {differing[0]}): rerun with the run's own overrides "
                f"(.hydra/overrides.yaml), or use another hydra.run.dir or resume=false")


def _read(path: Path) -> Resumable | None:
    """The checkpoint's summary, its tensors memory-mapped and dropped; None (with a warning) if unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        shapes = {name: tuple(value.shape) for name, value in state["state_dict"].items()}
        return Resumable(path, int(state["round_index"]), shapes)
    except Exception as error:  # truncated zip, bad pickle, wrong type, missing keys: all mean "not this one"
        warnings.warn(f"{path} is unreadable ({type(error).__name__}): skipped", stacklevel=2)
        return None


def resume_checkpoint(checkpoint_dir: Path) -> Resumable | None:
    """The newest readable checkpoint (last.ckpt first, then rounds newest first); None when there is none."""
    rounds = sorted((p for p in checkpoint_dir.glob("round-*.ckpt") if ROUND_FILE.fullmatch(p.name)),
                    key=lambda p: int(ROUND_FILE.fullmatch(p.name)[1]), reverse=True)
    candidates = [p for p in [checkpoint_dir / "last.ckpt", *rounds] if p.is_file()]
    for path in candidates:
        checkpoint = _read(path)
        if checkpoint is not None:
            if path != candidates[0]:
                log.warning("resuming from %s: the newer checkpoints are unreadable", path)
            return checkpoint
    if candidates:
        raise AlignlabError(f"no readable checkpoint in {checkpoint_dir} (all {len(candidates)} are corrupt): "
                            "move it aside to start over, or set resume=false")
    return None
