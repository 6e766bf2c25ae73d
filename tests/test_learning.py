"""Learning runs (slow): the methods must actually raise their reward on the tiny model."""

import json

import pytest

from alignlab.run import train
from tests.hydra_app import compose_config

LEARN = [
    "model=tiny",
    "sampler.num_steps=6",
    "sampler.progress=false",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "method.sample_batch_size=8",
    "method.num_batches_per_round=2",
    "method.train_batch_size=8",
    "method.clip_range=0.2",
    "finetune.mode=full",
    "optimizer.lr=1e-3",
]


@pytest.mark.slow
def test_ddpo_raises_jpeg_compressibility(tmp_path):
    """20 seeded rounds (~2.5 min on 2 cores): the last rounds' mean reward is clearly above the first
    rounds', measured in units of the first round's reward spread."""
    train(compose_config(tmp_path, [*LEARN, "trainer.max_epochs=20", "reward=jpeg_compressibility"]))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    start = sum(r["reward_mean"] for r in rows[:2]) / 2
    end = sum(r["reward_mean"] for r in rows[-3:]) / 3
    spread = rows[0]["reward_std"]
    print(f"reward {start:.4f} -> {end:.4f} (first-round std {spread:.4f})")
    assert end - start > 1.5 * spread

