"""The entry point end to end on the tiny model: the run-directory contract and resume (bad input: test_errors.py)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from alignlab.methods.ddpo import DDPO
from alignlab.run import train
from tests.hydra_app import FAST, cli, comparable, compose_config, run_inprocess, same_lora


def test_two_rounds_write_the_run_directory_contract(tmp_path):
    rows = run_inprocess(tmp_path, "trainer.max_epochs=2", "logger=wandb")
    assert [r["round"] for r in rows] == [0, 1]
    for row in rows:
        for key in ("reward_mean", "reward_std", "loss", "approx_kl", "clipfrac", "grad_norm"):
            assert key in row and row[key] == row[key], key  # present and not NaN
        assert row["reward_mean"] < 0  # jpeg_compressibility = -kilobytes
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    lora = load_file(tmp_path / "lora" / "pytorch_lora_weights.safetensors")
    assert lora and all("lora" in k for k in lora)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["round_0000.png", "round_0001.png"]
    assert (tmp_path / "plots" / "alignment.png").stat().st_size > 1000
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert all("lora_" in k for k in ckpt["state_dict"])  # lean: no frozen weights in checkpoints
    assert "stat_tracker" in ckpt and ckpt["epoch"] == 1


def test_a_round_with_nothing_to_train_is_still_evaluated_recorded_and_checkpointed(tmp_path, monkeypatch):
    """The round ends in the method (its last batch), not in a callback: a round without micro-batches (a
    B²-DiffuRL round without survivors) still gets its evaluation, its row and its checkpoint."""
    rollout = DDPO.start_round
    monkeypatch.setattr(DDPO, "start_round", lambda self: rollout(self) and [])
    rows = run_inprocess(tmp_path, "trainer.max_epochs=2", "eval.every=1", "eval.max_prompts=2",
                         "eval.samples_per_prompt=1")
    assert [r["round"] for r in rows] == [0, 1]
    assert all("eval/reward_mean" in r and "reward_mean" in r and "time_update" not in r for r in rows)
    assert (tmp_path / "samples" / "eval_round_0001.png").is_file()
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["round_index"] == 2


def test_two_rounds_equal_one_round_resume_one_round(tmp_path):
    straight = run_inprocess(tmp_path / "a", "trainer.max_epochs=2", "logger=none")
    run_inprocess(tmp_path / "b", "trainer.max_epochs=1", "logger=none")
    resumed = run_inprocess(tmp_path / "b", "trainer.max_epochs=2", "logger=none")
    assert comparable(straight) == comparable(resumed)
    assert same_lora(tmp_path / "a", tmp_path / "b")
    fresh = run_inprocess(tmp_path / "c", "trainer.max_epochs=2", "logger=none", "seed=1")
    assert comparable(fresh) != comparable(straight)  # the seed matters, so the equality above means something


def test_help_lists_the_config_groups(tmp_path):
    result = cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    for group in ("method:", "model:", "sampler:", "reward:", "optimizer:", "prompts:", "trainer:", "logger:",
                  "experiment:"):
        assert group in result.stdout
    assert "method: asyndm, b2diffurl, ddpo, dfusion, dpo" in result.stdout
    assert "schema/" not in result.stdout  # the presets' typed schemas are not options for users


def test_non_finite_reward_drops_the_sample(tmp_path, monkeypatch):
    from alignlab.rewards import JpegCompressibility

    original = JpegCompressibility.__call__

    def one_nan(self, images, prompts):
        rewards = original(self, images, prompts)
        rewards[0] = float("nan")
        return rewards

    monkeypatch.setattr(JpegCompressibility, "__call__", one_nan)
    with pytest.warns(UserWarning, match="non-finite reward"):
        rows = run_inprocess(tmp_path, "trainer.max_epochs=1", "logger=none")
    assert rows[0]["nonfinite_rewards"] == 1.0
    assert rows[0]["samples_per_round"] == 3.0  # 4 sampled, 1 dropped
    assert rows[0]["reward_mean"] == rows[0]["reward_mean"]  # finite


def test_non_finite_loss_stops_with_the_last_checkpoint_intact(tmp_path, monkeypatch):
    from alignlab.errors import AlignlabError
    from alignlab.objectives import ppo_clip

    run_inprocess(tmp_path, "trainer.max_epochs=1", "logger=none")
    before = (tmp_path / "checkpoints" / "last.ckpt").read_bytes()
    original = ppo_clip.ppo_clip_loss

    def nan_loss(*args, **kwargs):
        stats = original(*args, **kwargs)
        stats.loss = stats.loss * float("nan")
        return stats

    monkeypatch.setattr(ppo_clip, "ppo_clip_loss", nan_loss)
    with pytest.raises(AlignlabError, match="non-finite gradient in round 1"):
        run_inprocess(tmp_path, "trainer.max_epochs=2", "logger=none")
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == before


def test_train_returns_the_last_rounds_reward_for_sweepers(tmp_path):
    value = train(compose_config(tmp_path, [*FAST, "trainer.max_epochs=1", "logger=none"]))
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert value == last["reward_mean"]


def test_the_console_shows_one_line_per_round_with_its_reward_and_where_the_run_went(tmp_path):
    run_dir = tmp_path / "run"
    shown = [arg for arg in FAST if arg != "trainer.enable_progress_bar=false"]
    result = cli(*shown, "trainer.max_epochs=2", "logger=none", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    console = result.stdout + result.stderr
    assert result.returncode == 0, console[-2000:]
    assert f"run directory: {run_dir}" in console and f"done: {run_dir} holds metrics.jsonl" in console
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # each round's line carries that round's reward
        assert f"round {row['round'] + 1}/2" in console and f"reward: {row['reward_mean']:.3f}" in console
    for chatter in ("GPU available", "litlogger", "LeafSpec", "IterableDataset", "in eval mode", "v_num", "sampling:"):
        assert chatter not in console
