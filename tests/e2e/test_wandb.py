"""What a W&B workspace receives, read back from offline runs: config keys, name, group, tables, summary and the
reward-hacking alarm."""

from __future__ import annotations

import json
import logging

import pytest
from omegaconf import OmegaConf

from alignlab.eval.held_out import HeldOutEvaluation
from alignlab.eval.hacking import reward_hacking
from alignlab.training.loggers import wandb_logger
from alignlab.training.wandb_run import alert, run_identity
from tests.hydra_app import compose_config, run_inprocess
from tests.wandb_records import offline_run


def test_an_offline_run_logs_config_identity_tables_and_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    rows = run_inprocess(tmp_path, "trainer.max_epochs=2", "logger=wandb", "eval.every=1", "eval.max_prompts=2",
                         "eval.samples_per_prompt=1", "optimizer.lr=2e-4", "seed=3")
    logged = offline_run(tmp_path)
    config = logged["config"]
    assert (config["method.name"], config["reward.name"], config["model.name"]) == ("ddpo", "jpeg_compressibility",
                                                                                   "tiny")
    assert config["optimizer.lr"] == 2e-4 and config["seed"] == 3 and config["method.clip_range"] == 1e-4
    assert config["sampler.num_steps"] == 3 and "hydra.run.dir" not in config
    run = logged["run"]
    assert run.display_name == "ddpo-jpeg_compressibility-seed3" and run.job_type == "ddpo"
    assert {"method:ddpo", "reward:jpeg_compressibility", "model:tiny"} <= set(run.tags) and run.run_group == ""
    tables = {key: row[key] for row in logged["history"] for key in ("samples_table", "eval_table") if key in row}
    assert set(tables) == {"samples_table", "eval_table"}
    for key, value in tables.items():
        table = json.loads((logged["files"] / value["path"]).read_text())
        assert table["columns"] == ["round", "prompt", "image", "reward", "oracle_score", "passed"], key
        assert len(table["data"]) == (4 if key == "samples_table" else 2)  # log_images=4; 2 prompts x 1 sample
    summary = logged["summary"]
    assert summary["images_sampled"] == 8 and [r["images_sampled"] for r in rows] == [4, 8]
    assert summary["eval/reward_mean_final"] == rows[-1]["eval/reward_mean"]
    assert summary["eval/reward_mean_best"] == max(r["eval/reward_mean"] for r in rows)
    seconds = sum(v for r in rows for k, v in r.items() if k.startswith("time_"))
    assert summary["round_seconds"] == pytest.approx(seconds) and seconds > 0
    assert all(r["eval/reward_hacking"] == 0.0 for r in rows)


def test_the_jobs_of_a_multirun_share_the_sweep_directory_as_group(tmp_path):
    cfg = compose_config(tmp_path, ["method=b2diffurl", "reward=clip", "seed=1"])
    assert run_identity(1)["group"] is None
    swept = OmegaConf.to_container(cfg.hydra)  # a plain copy: the composed config is read-only
    swept.update(mode="MULTIRUN", sweep={"dir": "multirun/2026-12-06/10-00-00", "subdir": "0"})
    assert run_identity(1, OmegaConf.create(swept)) == {
        "name": "b2diffurl-clip-seed1", "group": "multirun/2026-12-06/10-00-00", "job_type": "b2diffurl",
        "tags": ["method:b2diffurl", "reward:clip", "model:world", "prompts:world", "sampler:ddim", "optimizer:adamw"]}


def test_reward_hacking_on_a_synthetic_series():
    proxy, gold = [0.60, 0.61, 0.63, 0.66], [0.55, 0.54, 0.52, 0.50]
    assert reward_hacking(proxy, gold, 3, 0.01) == (
        "reward hacking? over the last 3 evaluations the held-out reward rose 0.6100 -> 0.6600 while the oracle score "
        "fell 0.5400 -> 0.5000")
    assert reward_hacking(proxy, gold, 5, 0.01) is None  # fewer evaluations than the window
    assert reward_hacking(proxy, [0.55, 0.54, 0.54, 0.535], 3, 0.01) is None  # gold within the tolerance
    assert reward_hacking([0.6, 0.7, 0.6], [0.6, 0.5, 0.5], 3, 0.01) is None  # proxy did not rise
    assert reward_hacking(proxy, gold, 0, 0.01) is None  # off


def test_the_alarm_reads_earlier_evaluations_from_the_run_and_warns(tmp_path, caplog):
    earlier = [{"round": 4, "eval/reward_mean": 0.60, "eval/oracle_score": 0.56},
               {"round": 9, "eval/reward_mean": 0.62, "eval/oracle_score": 0.52}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [{"round": 0}, *earlier]))
    callback = HeldOutEvaluation(tmp_path, every=5, hacking_window=3, hacking_tolerance=0.01)
    with caplog.at_level(logging.WARNING, logger="alignlab"):
        assert callback.watch_for_hacking(0.65, 0.49).startswith("reward hacking? over the last 3 evaluations")
    assert "0.5600 -> 0.4900" in caplog.text
    assert callback.watch_for_hacking(0.65, 0.56) is None
    assert callback.watch_for_hacking(0.65, None) is None  # no gold metric (not world prompts)


def test_an_offline_alert_is_kept_in_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    compose_config(tmp_path)
    logger = wandb_logger(str(tmp_path))
    alert(logger, "reward hacking? a test")
    logger.experiment.finish()
    (kept,) = offline_run(tmp_path)["alerts"]
    assert kept.title == "reward hacking" and kept.text == "reward hacking? a test"
