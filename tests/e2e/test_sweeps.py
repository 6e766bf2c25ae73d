"""Hydra sweeps on the tiny model: one run directory per job and a sweep summary (alignlab.sweeps), the Optuna
preset maximising the returned held-out reward, and the SLURM preset rendered into an sbatch script."""

import json
import os
import sys

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import OmegaConf

from alignlab.run import main
from alignlab.sweeps import SweepSummary
from tests.hydra_app import FAST, compose_config
from tests.e2e.test_run import cli

TINY_SWEEP = [*FAST, "trainer.max_epochs=1", "logger=none", "prompts=simple"]


def last_row(run_dir) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def job_overrides(run_dir) -> dict[str, str]:
    return dict(o.split("=", 1) for o in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()))


def test_multirun_writes_a_run_dir_per_job_and_a_summary_that_outlives_a_failed_job(tmp_path):
    sweep = tmp_path / "sweep"
    result = cli("-m", *TINY_SWEEP, "seed=0,1", "finetune.mode=lora,partial", f"hydra.sweep.dir={sweep}",
                 cwd=tmp_path)
    assert result.returncode == 1  # the sweep reports its failed jobs...
    assert "alignlab: error: finetune.mode must be lora or full, got 'partial'" in result.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]  # ...yet every job ran, each in its own directory
    trained = {f"seed={job_overrides(d)['seed']}": d for d in jobs if (d / "metrics.jsonl").exists()}
    assert sorted(trained) == ["seed=0", "seed=1"]
    assert all(not (d / ".hydra").exists() for d in jobs if d not in trained.values())  # rejected: nothing recorded
    assert all(job_overrides(d)["finetune.mode"] == "lora" for d in trained.values())
    summary = json.loads((sweep / "summary.json").read_text())
    assert sorted(summary) == ["seed=0", "seed=1"]  # labelled by what differs; the failed jobs have no rounds
    for label, run_dir in trained.items():
        row = last_row(run_dir)
        assert summary[label]["dir"] == str(run_dir) and summary[label]["rounds"] == 1
        assert summary[label]["reward_first"] == summary[label]["reward_last"] == row["reward_mean"]
    table = (sweep / "summary.md").read_text()
    assert "Every run: `" in table and "finetune.mode=lora" in table.split("|")[0]
    assert f"| seed=0 | 1 | {summary['seed=0']['reward_last']:.4g} |" in table
    assert (sweep / "curves.png").stat().st_size > 1000


def test_a_single_run_writes_no_sweep_summary(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"round": 0, "reward_mean": 1.0}\n')
    for mode, written in ((RunMode.RUN, False), (RunMode.MULTIRUN, True)):
        cfg = OmegaConf.create({"hydra": {"mode": mode, "sweep": {"dir": str(tmp_path)}}})
        SweepSummary().on_job_end(cfg, job_return=None)
        assert (tmp_path / "summary.md").exists() == written


def hydra_main(monkeypatch, *args: str) -> None:
    """`python -m alignlab.run *args` in this process (saves a second interpreter's imports)."""
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["alignlab.run", *args, "hydra/job_logging=none", "hydra/hydra_logging=none"])
    main()


def test_optuna_preset_maximises_the_held_out_reward_the_jobs_return(tmp_path, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason='pip install -e ".[sweep]"')
    sweep = tmp_path / "optuna"
    hydra_main(monkeypatch, "-m", "hydra/sweeper=alignlab_optuna", "hydra.sweeper.n_trials=2", *TINY_SWEEP,
               "eval.max_prompts=2", "eval.samples_per_prompt=1", f"hydra.sweep.dir={sweep}")
    trials = {}
    for run_dir in (sweep / "0", sweep / "1"):
        overrides = job_overrides(run_dir)
        assert 1e-5 <= float(overrides["optimizer.lr"]) <= 1e-2
        assert float(overrides["method.clip_range"]) in (1e-4, 1e-3, 1e-2, 0.1)
        row = last_row(run_dir)  # eval ran after the (only) round: the value the job returned
        trials[row["eval/reward_mean"]] = {k: float(overrides[k]) for k in ("optimizer.lr", "method.clip_range")}
    assert len(trials) == 2  # two different values, so "best" below tells maximise from minimise
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.best_value == max(trials)
    assert dict(results.best_params) == trials[max(trials)]
    summary = json.loads((sweep / "summary.json").read_text())
    assert sorted(run["eval/reward_mean"] for run in summary.values()) == sorted(trials)


class Submitted(Exception):
    """Raised where the SLURM launcher would submit its job array."""


def test_slurm_preset_renders_an_sbatch_script_for_one_gpu_per_job(tmp_path, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason='pip install -e ".[sweep]"')
    import submitit

    srun = tmp_path / "bin" / "srun"  # submitit checks for srun before it builds a SLURM executor
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_config(tmp_path, ["hydra/launcher=alignlab_slurm", "hydra.launcher.partition=gpu",
                                    f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.job.name=alignlab.run"])
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)

    def submit(executor, *args):
        raise Submitted(executor._executor._make_submission_file_text("python -m alignlab.run", "uid"))

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", submit)
    with pytest.raises(Submitted) as submitted:
        launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=0)
    sbatch = str(submitted.value)
    for line in ("--gpus-per-node=1", "--ntasks-per-node=1", "--cpus-per-task=8", "--mem=64GB", "--time=240",
                 "--partition=gpu", "--nodes=1", f"--output={tmp_path}/sweep/.submitit/"):
        assert f"#SBATCH {line}" in sbatch
