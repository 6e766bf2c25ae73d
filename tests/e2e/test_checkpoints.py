"""Checkpoints survive kills and corruption: atomic writes, the last K kept, a fallback to the newest
readable one, SIGKILL mid-run + rerun == an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from alignlab.errors import AlignlabError, ConfigError
from alignlab.methods.ddpo import DDPO
from alignlab.run import train
from alignlab.training.artifacts import read_metrics
from alignlab.training.run_directory import MARKER
from tests.hydra_app import FAST, NO_EVAL, comparable, compose_config, run_inprocess, same_lora

def test_last_k_kept_and_a_corrupt_newest_falls_back_to_an_older_round(tmp_path):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    rows = run_inprocess(straight, "trainer.max_epochs=3", "logger=none", "checkpoint.keep=2")
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == [
        "last.ckpt", "round-0001.ckpt", "round-0002.ckpt"]
    for name, rounds_done in [("last.ckpt", 3), ("round-0001.ckpt", 2), ("round-0002.ckpt", 3)]:
        # loadable without unpickling arbitrary objects
        assert torch.load(straight / "checkpoints" / name, weights_only=True)["round_index"] == rounds_done
    run_inprocess(resumed, "trainer.max_epochs=3", "logger=none", "checkpoint.keep=2")
    for name in ("last.ckpt", "round-0002.ckpt"):  # the newest two cut short, as by a full disk
        path = resumed / "checkpoints" / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(UserWarning, match="last.ckpt is unreadable"):
        again = run_inprocess(resumed, "trainer.max_epochs=3", "logger=none", "checkpoint.keep=2")
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == [  # rewritten in place, no -v1 copies
        "last.ckpt", "round-0001.ckpt", "round-0002.ckpt"]
    assert comparable(again) == comparable(rows)  # round 2 replayed from round-0001.ckpt
    assert same_lora(straight, resumed)


def test_no_readable_checkpoint_is_one_sentence(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    (tmp_path / MARKER).touch()  # a run directory alignlab made
    with pytest.warns(UserWarning), pytest.raises(AlignlabError, match="no readable checkpoint .* pick another "
                                                                       "hydra.run.dir"):
        run_inprocess(tmp_path, "trainer.max_epochs=1", "logger=none")


def files_in(directory) -> dict:
    """Every file below `directory` with its bytes: what a rerun must leave as it was."""
    return {path: path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def test_rerunning_a_finished_run_samples_nothing_and_returns_its_reward(tmp_path, monkeypatch):
    """Lightning would roll out the next round before noticing max_epochs is reached: minutes on SD per
    finished job when a sweep is launched again to complete the missing ones."""
    rows = run_inprocess(tmp_path, "trainer.max_epochs=2", "logger=none")
    files = files_in(tmp_path)

    def no_rollout(method):
        raise AssertionError("a finished run sampled a round")

    monkeypatch.setattr(DDPO, "start_round", no_rollout)
    for max_epochs in (2, 1):
        assert train(compose_config(tmp_path, [*FAST, f"trainer.max_epochs={max_epochs}", "logger=none"])) == \
            rows[-1]["reward_mean"]
    assert files_in(tmp_path) == files


@pytest.mark.parametrize("change, differing", [("finetune.rank=8", "lora_A"), ("finetune.mode=full", "conv_in")])
def test_resuming_with_other_trainable_weights_is_one_sentence_and_writes_nothing(tmp_path, change, differing):
    run_inprocess(tmp_path, "trainer.max_epochs=1", "logger=none")
    files = files_in(tmp_path)
    with pytest.raises(ConfigError, match=f"last.ckpt holds other trainable weights than this config trains "
                                          f"\\(\\d+ of \\d+ differ, e.g. .*{differing}.*another hydra.run.dir"):
        run_inprocess(tmp_path, "trainer.max_epochs=2", "logger=none", change)
    assert files_in(tmp_path) == files


def test_resuming_with_another_reward_warns_and_a_longer_run_does_not(tmp_path, caplog):
    run_inprocess(tmp_path, "trainer.max_epochs=1", "logger=none")
    with caplog.at_level("WARNING", logger="alignlab"):
        run_inprocess(tmp_path, "trainer.max_epochs=2", "logger=none", "checkpoint.keep=2")
    assert not [r for r in caplog.records if r.levelname == "WARNING" and r.name == "alignlab"]
    with caplog.at_level("WARNING", logger="alignlab"):
        run_inprocess(tmp_path, "trainer.max_epochs=3", "logger=none", "reward=jpeg_incompressibility",
                      "optimizer.lr=1e-4")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == "alignlab"]
    assert len(warnings) == 1 and warnings[0].startswith("resuming with another reward, optimizer than")


def test_truncated_last_metrics_line_is_left_out(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 0, "reward_mean": 1.0}\n{"round": 1, "rew')
    assert read_metrics(path) == [{"round": 0, "reward_mean": 1.0}]


def test_sigkill_mid_run_then_the_same_command_equals_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    rows = run_inprocess(straight, "trainer.max_epochs=2", "logger=none")
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "alignlab.run", *FAST, "trainer.max_epochs=2", "logger=none", NO_EVAL,
               f"hydra.run.dir={killed}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "checkpoints" / "round-0000.ckpt"
    deadline = time.monotonic() + 240
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # round 0 checkpointed; round 1 under way (or its checkpoint writing)
    process.wait()
    assert first.exists() and process.returncode == -signal.SIGKILL, process.returncode
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert comparable(read_metrics(killed / "metrics.jsonl")) == comparable(rows)
    assert same_lora(straight, killed)
