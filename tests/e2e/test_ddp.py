"""Data-parallel rounds (trainer=ddp) through the launch users run: `python -m alignlab.run` with 2 CPU processes
(gloo), against one process drawing the combined batch."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignlab.run import build, train
from tests.hydra_app import FAST, NO_EVAL, compose_config

# Two prompts, four rows a round: seed 0 draws [a dog, a cat | a dog, a cat], so each prompt's statistics
# (stat_min_count=2) need both ranks' rewards. SGD: the update is linear in the gradient, so a wrong average
# across ranks shows in the weights (AdamW's first step, g/|g|, would hide it).
COMMON = [*FAST, "prompts=simple", "prompts.train=[a cat,a dog]", "method.stat_min_count=2",
          "method.sample_batch_size=2", "method.gradient_accumulation_steps=1", "optimizer._target_=torch.optim.SGD",
          "~optimizer.betas", "~optimizer.eps", "optimizer.lr=1.0", "trainer.max_epochs=1", "logger=none", NO_EVAL]
PER_RANK = ["method.num_batches_per_round=1", "method.train_batch_size=2"]
ONE_PROCESS = ["method.num_batches_per_round=2", "method.train_batch_size=4"]
TWO_RANKS = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def launch(*overrides: str, cwd: Path) -> tuple[int, str]:
    """`python -m alignlab.run` on 2 CPU ranks -> (exit code, output); a hang kills rank 0 AND the rank it started."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    process = subprocess.Popen([sys.executable, "-m", "alignlab.run", *overrides, *TWO_RANKS], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return process.returncode, output


def lora_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def initial_lora_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """The LoRA weights both runs start from (same seed, same initialisation)."""
    method, _ = build(compose_config(run_dir, [*COMMON, *ONE_PROCESS]), run_dir)
    return {k: v.clone() for k, v in method.state_dict().items() if "lora_" in k}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_equal_one_process_with_the_combined_batch(tmp_path):
    ddp_dir = tmp_path / "ddp"
    code, output = launch(*COMMON, *PER_RANK, f"hydra.run.dir={ddp_dir}", cwd=tmp_path)
    assert code == 0 and "data parallel: 2 processes" in output, output[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # one run directory, no ${now} duplicates
    assert output.count("run directory:") == 1 and output.count("done:") == 1  # printed by rank 0 only

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: the rollouts, hence the JPEG rewards, are then bit-identical
    try:
        single_dir = tmp_path / "single"
        initial = initial_lora_state(single_dir)
        train(compose_config(single_dir, [*COMMON, *ONE_PROCESS]))
    finally:
        torch.set_num_threads(threads)

    # rank 0 wrote one row; the rewards are both ranks' (rows 0-1 and 2-3: different noise, not one copy twice)
    (ddp_row,), (single_row,) = metrics(ddp_dir), metrics(single_dir)
    for key in ("reward_mean", "reward_std", "samples_per_round"):
        assert ddp_row[key] == single_row[key], key
    assert abs(ddp_row["grad_norm"] - single_row["grad_norm"]) < 1e-5 * single_row["grad_norm"]

    ddp, single = lora_state(ddp_dir), lora_state(single_dir)
    assert ddp.keys() == single.keys() == initial.keys()
    step = max((single[k] - initial[k]).abs().max().item() for k in single)
    difference = max((ddp[k] - single[k]).abs().max().item() for k in single)
    # float32 sums in another order (2 rows per rank vs 4 in one batch) differ by ~1e-9; halving or doubling the
    # gradient, or one rank's rows missing, would move the weights by about the step itself (~1e-3)
    assert step > 1e-4 and difference < 1e-6, (step, difference)


@pytest.mark.slow
def test_b2diffurl_ranks_with_uneven_selections_do_not_hang(tmp_path):
    """B²-DiffuRL keeps a different number of siblings on each rank (with these settings rank 0 has 2 and 4
    micro-batches fewer in rounds 0 and 1): the rank with fewer runs idle micro-batches instead of waiting forever
    in the other's gradient all-reduce."""
    code, output = launch("model=tiny", "reward=jpeg_compressibility", "method=b2diffurl", "sampler.num_steps=4",
                          "sampler.progress=false", "method.sample_batch_size=2", "method.num_batches_per_round=1",
                          "method.num_branches=3", "method.split_step_min=1", "method.split_step_max=4",
                          "method.num_stages=2", "method.train_batch_size=1", "method.pos_threshold=0.9",
                          "trainer.max_epochs=3", "trainer.enable_progress_bar=false", "logger=none",
                          f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert code == 0, output[-3000:]
    rows = metrics(tmp_path / "run")
    assert [r["round"] for r in rows] == [0, 1, 2] and all(r["samples_per_round"] == 12 for r in rows)
