"""Loggers: W&B offline unless the user is logged in (no network is needed to run)."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from alignlab.errors import ConfigError


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_logger(save_dir: str, project: str = "alignlab", name: str | None = None, mode: str = "auto",
                 tags: list[str] | None = None, group: str | None = None, seed: int = 0) -> WandbLogger:
    """mode: auto (online when logged in, else offline; `wandb sync <run_dir>/wandb` uploads later),
    online or offline. WANDB_MODE in the environment wins, as wandb users expect. Unset name, group and tags
    come from the run (wandb_run.run_identity); the job type is the method."""
    from alignlab.training.wandb_run import run_identity

    if mode not in ("auto", "online", "offline"):
        raise ConfigError(f"logger.mode must be auto, online or offline, got {mode!r}")
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    identity = run_identity(seed)
    return WandbLogger(project=project, name=name or identity["name"], save_dir=save_dir,
                       offline=mode == "offline", tags=tags if tags is not None else identity["tags"],
                       group=group or identity["group"], job_type=identity["job_type"])


def no_logger() -> bool:
    """`logger=none`: Lightning's `Trainer(logger=False)`."""
    return False
