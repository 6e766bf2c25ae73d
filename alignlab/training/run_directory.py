"""Who may write a run directory: the alignlab run that made it, one process at a time.

A run directory holds weeks of a researcher's results. Writing into a folder alignlab did not make (its
plots, samples and weights would be overwritten), starting over on top of an existing run with
`resume=false`, or two processes in one directory at once (their rounds interleave in metrics.jsonl) each
lose work without a word, so each is refused with one sentence. The marker file `.alignlab` says that
alignlab made the directory; an exclusive lock on it, held for the whole run, keeps a second process out.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from alignlab.errors import AlignlabError

MARKER = ".alignlab"
HYDRA_LOG = "run.log"  # Hydra's job log, written before alignlab's code runs


def is_alignlab_run(run_dir: Path) -> bool:
    """The marker, or the config every alignlab run records (runs made before the marker existed)."""
    return (run_dir / MARKER).is_file() or (run_dir / ".hydra" / "config.yaml").is_file()


def check_foreign(run_dir: Path) -> None:
    """Refuse a non-empty directory that alignlab did not make (Hydra's own log aside)."""
    if not run_dir.is_dir() or is_alignlab_run(run_dir):
        return
    others = sorted(p.name for p in run_dir.iterdir() if p.name != HYDRA_LOG)
    if others:
        raise AlignlabError(f"hydra.run.dir={run_dir} holds files alignlab did not write (e.g. {others[0]}); "
                            f"pick a new or empty directory")


def has_run(run_dir: Path) -> bool:
    """Whether a run has recorded rounds here (metrics or checkpoints)."""
    checkpoints = run_dir / "checkpoints"
    return (run_dir / "metrics.jsonl").is_file() or (checkpoints.is_dir() and any(checkpoints.glob("*.ckpt")))


def check_fresh_start(run_dir: Path) -> None:
    """`resume=false` starts over, which would overwrite the run already in `run_dir`."""
    if has_run(run_dir):
        raise AlignlabError(f"hydra.run.dir={run_dir} already holds a run, which resume=false would overwrite; "
                            f"rerun with resume=true to continue it, or pick a new hydra.run.dir")


class RunLock:
    """An exclusive lock on `<run_dir>/.alignlab` for as long as the run lasts (the OS drops it when the
    process dies, so a killed run never leaves a stale lock). The marker is written once, when the directory
    is new: a later run that is refused (a second process, a resume that does not fit) changes nothing."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / MARKER
        self.handle = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise AlignlabError(f"hydra.run.dir={self.path.parent} is in use by another alignlab run; "
                                f"wait for it to end or pick another hydra.run.dir") from None
        if handle.tell() == 0:  # a new marker ("a+" opens at the end)
            handle.write(json.dumps({"created": time.strftime("%Y-%m-%d %H:%M:%S"), "host": socket.gethostname(),
                                     "pid": os.getpid()}))
            handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()  # closing releases the lock; the file stays as the marker
