"""The sweep summary: a Hydra callback (conf/config.yaml, hydra.callbacks) that writes alignlab.report's
summary.md, summary.json and curves.png into a multirun's sweep directory.

It rewrites them after every job, not only when the sweep ends: Hydra skips on_multirun_end once a job has
failed, and a killed sweep never reaches it, yet the jobs that ran deserve their table. Single runs are left
alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from alignlab.errors import ConfigError

log = logging.getLogger("alignlab")


class SweepSummary(Callback):
    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            write_sweep_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_sweep_summary(Path(config.hydra.sweep.dir))  # parallel launchers: once more, after every job


def write_sweep_summary(sweep_dir: Path) -> None:
    from alignlab.report import write_summary  # matplotlib: imported only when a sweep needs it

    try:
        write_summary(sweep_dir)
    except ConfigError as error:  # no job has written a round yet
        log.warning("sweep summary: %s", error)
        return
    log.info("sweep summary: %s", sweep_dir / "summary.md")
