"""Compose alignlab's config in-process, as `python -m alignlab.run` would, for tests."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from alignlab.run import CONF_DIR

FAST = [
    "model=tiny",
    "reward=jpeg_compressibility",
    "sampler.num_steps=3",
    "sampler.progress=false",
    "method.sample_batch_size=4",
    "method.num_batches_per_round=1",
    "method.train_batch_size=2",
    "method.log_images=4",
    "trainer.enable_progress_bar=false",
]


def compose_config(run_dir: Path | str, overrides: list[str] = ()) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def save_run_config(cfg: DictConfig, run_dir: Path) -> None:
    """Write <run_dir>/.hydra/config.yaml as `python -m alignlab.run` does (what `alignlab.evaluate` reads)."""
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), run_dir / ".hydra" / "config.yaml")
