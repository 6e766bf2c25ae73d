"""Held-out evaluation: fixed-seed evaluate_prompts, HeldOutEvaluation in the metrics rows (without perturbing
training) and `python -m alignlab.evaluate` on a run directory."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from alignlab.samplers.ddim import DDIMSampler
from alignlab.eval import evaluate_prompts
from alignlab.eval.held_out import eval_due
from alignlab.eval.evaluate import pairwise_diversity
from alignlab.evaluate import main as evaluate_main
from alignlab.rewards import JpegCompressibility
from alignlab.run import record_config, train
from tests.hydra_app import FAST, compose_config

# the smallest run that still trains: 2 samples per round, 2 sampling steps, 1 trained timestep each
SMALL = [*FAST, "prompts=simple", "sampler.num_steps=2", "method.sample_batch_size=2", "method.train_batch_size=2",
         "method.timestep_fraction=0.5", "logger=none", "trainer.max_epochs=2", "optimizer.lr=1e-2"]
EVAL = ["eval.max_prompts=2", "eval.samples_per_prompt=1"]


def test_evaluate_prompts_is_fixed_seed_and_ignores_global_rng(tiny_model):
    sampler, reward = DDIMSampler(num_steps=2, progress=False), JpegCompressibility()
    prompts = ["a fox", "a deer"]
    torch.manual_seed(1)
    first = evaluate_prompts(tiny_model, sampler, reward, prompts, samples_per_prompt=2, batch_size=3, seed=0)
    torch.manual_seed(12345)
    torch.randn(100)
    second = evaluate_prompts(tiny_model, sampler, reward, prompts, samples_per_prompt=2, batch_size=3, seed=0)
    assert torch.equal(first["images"], second["images"]) and first["rewards"] == second["rewards"]
    assert first["prompts"] == ["a fox", "a fox", "a deer", "a deer"] and first["images"].shape[0] == 4
    assert set(first["per_prompt"]) == set(prompts)
    assert first["reward_mean"] == pytest.approx(sum(first["rewards"]) / 4)
    other = evaluate_prompts(tiny_model, sampler, reward, prompts, samples_per_prompt=2, batch_size=3, seed=1)
    assert not torch.equal(first["images"], other["images"])  # the seed matters


def test_eval_is_due_every_n_rounds_and_after_the_last():
    assert [r for r in range(5) if eval_due(r, 2, 5)] == [1, 3, 4]
    assert [r for r in range(3) if eval_due(r, 1, 3)] == [0, 1, 2]
    assert not any(eval_due(r, 0, 3) for r in range(3))


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 2-round run with evaluation every round and without."""
    base = tmp_path_factory.mktemp("eval_runs")
    train(compose_config(base / "with", [*SMALL, *EVAL, "eval.every=1"]))
    train(compose_config(base / "without", [*SMALL, *EVAL, "eval.every=0"]))
    return base / "with", base / "without"


def test_eval_every_round_writes_metrics_and_grids(runs):
    with_eval, _ = runs
    metrics = rows(with_eval)
    assert [r["round"] for r in metrics] == [0, 1]
    for row in metrics:
        assert row["eval/reward_mean"] == row["eval/reward_mean"] and row["eval/reward_std"] >= 0
    samples = sorted(p.name for p in (with_eval / "samples").iterdir())
    assert samples == ["eval_round_0000.png", "eval_round_0001.png", "round_0000.png", "round_0001.png"]


def _training_only(metrics):
    return [{k: v for k, v in r.items() if not k.startswith(("eval/", "time_"))} for r in metrics]


def test_evaluation_does_not_perturb_training(runs):
    with_eval, without = runs
    assert not any(k.startswith("eval/") for r in rows(without) for k in r)
    assert _training_only(rows(with_eval)) == _training_only(rows(without))


def test_cli_reproduces_the_last_rounds_eval_and_base_differs(runs, capsys):
    run_dir, _ = runs
    report = evaluate_main([f"run_dir={run_dir}", "max_prompts=2", "samples_per_prompt=1"])
    saved = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert saved["reward_mean"] == report["reward_mean"] and saved["prompts"] == ["a fox", "a deer"]
    # the exported LoRA, reloaded into a rebuilt model, gives what the trained model gave in-process
    assert saved["reward_mean"] == pytest.approx(rows(run_dir)[-1]["eval/reward_mean"], abs=1e-6)
    table = (run_dir / "eval" / "eval.md").read_text()
    assert "| a fox |" in table and "| a deer |" in table
    assert (run_dir / "eval" / "grid.png").stat().st_size > 500
    base = evaluate_main([f"run_dir={run_dir}", "max_prompts=2", "samples_per_prompt=1", "--base"])
    assert json.loads((run_dir / "eval" / "base.json").read_text())["weights"] == "base"
    assert base["reward_mean"] != saved["reward_mean"]  # the trained LoRA is not zero


def test_a_run_recorded_before_the_samplers_moved_still_evaluates(runs, tmp_path):
    """Runs recorded with alignlab.core.sampling.DDIMSampler (before alignlab/samplers/) evaluate the same."""
    run_dir, _ = runs
    old = tmp_path / "old_run"
    shutil.copytree(run_dir, old)
    config = old / ".hydra" / "config.yaml"
    text = config.read_text()
    assert "alignlab.samplers.ddim.DDIMSampler" in text
    config.write_text(text.replace("alignlab.samplers.ddim.DDIMSampler", "alignlab.core.sampling.DDIMSampler"))
    options = ["max_prompts=2", "samples_per_prompt=1", "--base"]
    assert evaluate_main([f"run_dir={old}", *options])["reward_mean"] == evaluate_main(
        [f"run_dir={run_dir}", *options])["reward_mean"]


@pytest.mark.parametrize("make,expected", [
    (lambda tmp: tmp / "no_such_run", "no such directory"),
    (lambda tmp: tmp, "no .hydra/config.yaml"),
])
def test_cli_bad_run_dir_is_one_line(make, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main([f"run_dir={make(tmp_path)}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("alignlab: error:") and expected in err[0]


def test_cli_missing_lora_is_one_line(runs, tmp_path, capsys):
    run_dir, _ = runs
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text((run_dir / ".hydra" / "config.yaml").read_text())
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main([f"run_dir={tmp_path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no LoRA weights" in err[0]


def test_cli_on_a_training_free_run_points_to_base(tmp_path, capsys):
    record_config(compose_config(tmp_path, ["model=tiny", "method=asyndm", "prompts=asyn_animals"]), tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main([f"run_dir={tmp_path}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "alignlab: error: run_dir: method=asyndm trains nothing, so the run has no weights of its own; pass --base "
        "to evaluate the model it samples with"]


def test_diversity_is_the_mean_pairwise_cosine_distance_within_each_prompt():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert pairwise_diversity(torch.stack([a, a, a, b]), 2) == [0.0, 1.0]  # identical images; orthogonal ones
    assert pairwise_diversity(torch.stack([a, a, -a]), 3) == pytest.approx([4 / 3])  # pairs at 0, 2 and 2


def test_cli_on_world_prompts_adds_diversity_and_the_oracle_per_category(tmp_path):
    cfg = compose_config(tmp_path, ["sampler.num_steps=3", "sampler.progress=false", "prompts.per_category=1",
                                    "prompts.categories=[single_object,colour_attr]"])
    record_config(cfg, tmp_path)  # a run directory, as alignlab.run starts it
    options = [f"run_dir={tmp_path}", "samples_per_prompt=3", "max_prompts=2", "batch_size=6"]
    report = evaluate_main([*options, "rewards=[clip]", "name=base_test", "--base"])
    saved = json.loads((tmp_path / "eval" / "base_test.json").read_text())
    assert saved["diversity"] == report["diversity"] and list(saved["diversity_per_prompt"]) == saved["prompts"]
    per_prompt = list(saved["diversity_per_prompt"].values())
    assert saved["diversity"] == pytest.approx(sum(per_prompt) / 2) and all(0 < d < 2 for d in per_prompt)
    categories = saved["oracle_by_category"]
    assert list(categories) == ["single_object", "colour_attr"] and [c["images"] for c in categories.values()] == [3, 3]
    for key in ("oracle_score", "oracle_accuracy"):  # equal image counts: the overall value is the categories' mean
        assert saved[key] == pytest.approx(sum(c[key] for c in categories.values()) / 2)
    table = (tmp_path / "eval" / "base_test.md").read_text()
    assert f"{saved['diversity']:.4f}" in table and "| colour_attr | 3 |" in table
    assert (tmp_path / "eval" / "base_test_grid.png").exists() and not (tmp_path / "eval" / "base.json").exists()
    gold = evaluate_main([*options, "rewards=[oracle]", "name=oracle", "--base"])  # no CLIP: no diversity
    assert "diversity" not in gold and gold["reward_mean"] == pytest.approx(saved["oracle_score"])


def test_sample_captions_carry_reward_and_oracle_verdict_and_grids_keep_whole_captions():
    from PIL import Image, ImageDraw

    from alignlab.training.artifacts import FONT_SIZE, _font, _wrap, sample_captions, sample_grid
    from alignlab.world.grammar import spec_of
    from alignlab.world.oracle import world_scores
    from alignlab.world.render import render_batch

    prompts = ["a red circle to the left of a blue square", "a green triangle above a yellow circle"]
    images = render_batch([spec_of(prompts[0])] * 2, np.random.default_rng(0))  # the second is the wrong scene
    assert sample_captions(prompts, [0.5, 0.25], world_scores(images, prompts)) == [
        f"{prompts[0]}\nreward 0.500\noracle ✓", f"{prompts[1]}\nreward 0.250\noracle ✗"]
    assert sample_captions(["a cat", "a dog"], [1.0, 2.0]) == ["a cat\nreward 1.000", "a dog\nreward 2.000"]
    long = " ".join([prompts[0]] * 3)
    lines = _wrap(long, 122, _font(FONT_SIZE), ImageDraw.Draw(Image.new("RGB", (1, 1))))
    assert len(lines) >= 6 and " ".join(lines) == long  # every word kept, spaces too
    grown = sample_grid(images[:1], [long]).height - sample_grid(images[:1], ["x"]).height
    assert grown == (len(lines) - 1) * (FONT_SIZE + 3)  # the caption area holds every line
