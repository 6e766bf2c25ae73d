"""Checkpoints that survive a kill at any moment.

Each checkpoint is written to a temporary file beside it and renamed into place (AtomicCheckpointIO), and
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
from lightning.pytorch.plugins.io import TorchCheckpointIO

from alignlab.errors import AlignlabError, ConfigError, require_at_least_one
from alignlab.training.atomic import replace_atomically

log = logging.getLogger("alignlab")
ROUND_FILE = re.compile(r"round-(\d+)\.ckpt")


class RoundCheckpoints(ModelCheckpoint):
    """checkpoints/round-NNNN.ckpt for the last `keep` rounds, and last.ckpt, each overwritten in place.

    Lightning's own bookkeeping goes wrong whenever it did not write the files it finds (a copied or moved run
    directory, recovery from an older round after a corrupt newest one): it saves `last-v1.ckpt` beside the
    stale `last.ckpt`, which the next resume reads, and stops pruning the round files it does not remember. So
    names never get a version suffix and pruning goes by the round numbers on disk."""

    def __init__(self, run_dir: Path, keep: int):
        require_at_least_one("checkpoint", keep=keep)
        super().__init__(dirpath=run_dir / "checkpoints", filename="round-{epoch:04d}", auto_insert_metric_name=False,
                         save_top_k=-1, save_last=True, every_n_epochs=1, enable_version_counter=False)
        self.keep = keep

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if trainer.is_global_zero:
            for old in round_files(Path(self.dirpath))[self.keep:]:
                old.unlink(missing_ok=True)


def round_files(checkpoint_dir: Path) -> list[Path]:
    """checkpoints/round-NNNN.ckpt, newest first."""
    rounds = (p for p in checkpoint_dir.glob("round-*.ckpt") if ROUND_FILE.fullmatch(p.name))
    return sorted(rounds, key=lambda p: int(ROUND_FILE.fullmatch(p.name)[1]), reverse=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file beside their final name, then renamed: Lightning's own
    temporary file lives in the system's temporary directory, and when that is another file system the
    "rename" is a copy, which a full disk leaves truncated under the final name. A failed write removes its
    temporary file and stops the run with one sentence; the earlier checkpoints stay as they were."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            replace_atomically(path, lambda tmp: _save(checkpoint, tmp))
        except OSError as error:
            raise AlignlabError(f"could not write {path} ({error.strerror or error}); the run's earlier checkpoints "
                                f"are intact: make room and rerun the same command to resume") from error


def _save(checkpoint: dict, path: Path) -> None:
    """torch.save through a Python file: a full disk then raises OSError(ENOSPC), where torch's own writer
    given a path raises an opaque RuntimeError ("unexpected pos ...")."""
    with path.open("wb") as file:
        torch.save(checkpoint, file)


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
                f"(.hydra/overrides.yaml), or use another hydra.run.dir")


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
    candidates = [p for p in [checkpoint_dir / "last.ckpt", *round_files(checkpoint_dir)] if p.is_file()]
    for path in candidates:
        checkpoint = _read(path)
        if checkpoint is not None:
            if path != candidates[0]:
                log.warning("resuming from %s: the newer checkpoints are unreadable", path)
            return checkpoint
    if candidates:
        raise AlignlabError(f"no readable checkpoint in {checkpoint_dir} (all {len(candidates)} are corrupt): "
                            "move the run directory aside to start over, or pick another hydra.run.dir")
    return None
