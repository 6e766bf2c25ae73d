"""Compose alignlab's config in-process, as `python -m alignlab.run` would, or run that command, for tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from safetensors.torch import load_file

from alignlab.run import CONF_DIR, train

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
# The held-out evaluation curve (on by default) is off in tests unless a test asks for it: an evaluation at a
# run's last round sits between the rounds of a resumed run, and most tests compare runs round by round.
NO_EVAL = "eval.every=0"


def compose_config(run_dir: Path | str, overrides: list[str] = ()) -> DictConfig:
    GlobalHydra.instance().clear()
    overrides = list(overrides)
    if not any(o.startswith("eval.every=") for o in overrides):
        overrides.append(NO_EVAL)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def start_cli(*args: str, cwd: Path) -> subprocess.Popen:
    """`python -m alignlab.run *args` offline (no hub downloads, W&B offline), in the background."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    args = (*args, NO_EVAL) if not any(a.startswith("eval.every=") for a in args) else args
    return subprocess.Popen([sys.executable, "-m", "alignlab.run", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m alignlab.run *args` offline, to its end."""
    process = start_cli(*args, cwd=cwd)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def comparable(rows: list[dict]) -> list[dict]:
    """Metrics rows without their wall times: what two equivalent runs must agree on exactly."""
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]


def same_lora(a: Path, b: Path) -> bool:
    """Whether two run directories exported bit-identical LoRA weights."""
    x, y = (load_file(d / "lora" / "pytorch_lora_weights.safetensors") for d in (a, b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def run_inprocess(run_dir: Path, *overrides: str) -> list[dict]:
    """Train FAST + overrides in this process; the metrics.jsonl rows."""
    train(compose_config(run_dir, [*FAST, *overrides]))
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
