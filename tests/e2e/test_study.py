"""The miniature study's harness (experiments/study.py, `make study-smoke`): every experiment with a tiny budget
and one seed. Its tables must hold exactly the numbers of the run directories' own files, shared arms must be
one run, and a re-run must redo nothing."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from alignlab.training.artifacts import read_metrics
from alignlab.world.grammar import spec_of

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))
import study_runs  # noqa: E402
from study_tables import images_to_gain, paired_gains, signed_cell  # noqa: E402

RL_EXPERIMENTS = ("b2diffurl", "dfusion", "combos", "objectives")
VARIANTS = ("dm", "dm_concave", "asyndm")


def study(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "study.py"), *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=3600)


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study")
    result = study("all", "--smoke", "--out", str(out))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return out


def one_seed(value) -> dict:
    return {"mean": value, "std": None, "seeds": 1}


def test_images_to_gain_is_the_first_window_of_rollouts_that_accurate_and_the_held_out_gain_after_it():
    accuracy = [0.1, 0.2, 0.3, 0.3, 0.4]
    rows = [{"oracle_accuracy": a, "samples_per_round": 64.0, "time_rollout": 1.0, "time_update": 2.0}
            for a in accuracy]
    rows[1]["eval/oracle_accuracy"], rows[3]["eval/oracle_accuracy"] = 0.2, 0.35
    del rows[2]["time_update"]  # a round with nothing to train (B²-DiffuRL's, when every family ties)
    # windows of 3 rounds: 0.2, 0.267, 0.333; the second is the first >= 0.15 + 0.10, so round 4; the held-out
    # evaluation at or after it is round 4's
    assert images_to_gain(rows, start=0.15, start_test=0.2) == {"round": 4, "images": 256.0, "seconds": 10.0,
                                                                "test_gain": pytest.approx(0.15)}
    assert images_to_gain(rows, start=0.25, start_test=0.2) == dict.fromkeys(["round", "images", "seconds",
                                                                              "test_gain"])


@pytest.mark.slow
def test_asyndm_tables_hold_each_runs_comparison(out):
    results = json.loads((out / "asyndm" / "results.json").read_text())
    markdown = (out / "asyndm" / "results.md").read_text()
    assert list(results["arms"]) == ["asyndm", "asyndm_static", "asyndm_lin", "asyndm_exp", "asyndm_k0.3",
                                     "asyndm_k0.7"]
    for name, arm in results["arms"].items():
        table = json.loads((out / "runs" / name / "seed0" / "asyndm" / "table.json").read_text())
        for variant in VARIANTS:
            mine, theirs = arm["variants"][variant], table["variants"][variant]
            for key in ("reward_mean", "win_rate_vs_dm", "delta_vs_dm", "oracle_score", "oracle_accuracy"):
                assert mine[key] == one_seed(theirs[key]), (name, variant, key)
            for category in ("colour_attr", "position"):
                passed = [image["passed"][variant] for image in table["per_image"]
                          if spec_of(image["prompt"]).category == category]
                assert mine["by_category"][category] == one_seed(pytest.approx(sum(passed) / len(passed)))
        assert f"| {arm['label']} | 1 | {arm['variants']['asyndm']['reward_mean']['mean']:.4g} |" in markdown
    main = results["arms"]["asyndm"]["variants"]["asyndm"]
    assert f"| asyndm | 1 | {main['reward_mean']['mean']:.4g} | {main['win_rate_vs_dm']['mean']:.4g} |" in markdown
    assert (out / "asyndm" / "asyndm.png").stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.parametrize("experiment", RL_EXPERIMENTS)
def test_rl_tables_hold_each_runs_evaluations_and_curves(out, experiment):
    results = json.loads((out / experiment / "results.json").read_text())
    markdown = (out / experiment / "results.md").read_text()
    assert "pretrained_ddim" in results["rows"]
    for name, row in results["rows"].items():
        run = row["runs"]["0"]
        run_dir = Path(run["dir"])
        stem = "base" if name.startswith("pretrained_") else "eval"
        if stem == "eval":
            metrics = read_metrics(run_dir / "metrics.jsonl")
            assert run["images"] == sum(r["samples_per_round"] for r in metrics) > 0
            assert run["curve"]["reward"] == [r["eval/reward_mean"] for r in metrics if "eval/reward_mean" in r]
            assert run["curve"]["oracle_score"] == [r["eval/oracle_score"] for r in metrics if "eval/reward_mean" in r]
            base_dir = Path(results["rows"][row["baseline"]]["runs"]["0"]["dir"])
            before = {split: json.loads((base_dir / "eval" / f"base_{split}.json").read_text())["oracle_accuracy"]
                      for split in ("train", "test")}
            assert run["to_gain"] == images_to_gain(metrics, before["train"], before["test"])
            assert f"| {row['label']} | {int(run['to_gain']['images'] is not None)} of 1 |" in markdown
        for split in ("train", "test"):
            report = json.loads((run_dir / "eval" / f"{stem}_{split}.json").read_text())
            assert report["split"] == split
            for key, value in [("reward", report["rewards"]["clip"]["reward_mean"]),
                               ("oracle_score", report["oracle_score"]), ("oracle_accuracy", report["oracle_accuracy"]),
                               ("diversity", report["diversity"])]:
                assert row[split][key] == one_seed(value), (name, split, key)
            cells = [row["images"]["mean"], report["rewards"]["clip"]["reward_mean"], report["oracle_score"]]
            assert f"| {row['label']} | 1 | " + " | ".join(f"{v:.4g}" for v in cells) + " |" in markdown
            if stem == "eval":
                base_dir = Path(results["rows"][row["baseline"]]["runs"]["0"]["dir"])
                before = json.loads((base_dir / "eval" / f"base_{split}.json").read_text())
                gain = report["rewards"]["clip"]["reward_mean"] - before["rewards"]["clip"]["reward_mean"]
                assert row["gain"][split]["reward"] == pytest.approx(one_seed(gain))
                assert f"| {row['label']} | {split} | {signed_cell(one_seed(gain))} |" in markdown
    assert (out / experiment / "curves.png").stat().st_size > 1000


def test_paired_gains_subtract_the_same_seeds_pretrained_numbers():
    def run(reward, accuracy, oracle_score=None):
        split = {"reward": reward, "oracle_score": oracle_score, "oracle_accuracy": accuracy}
        return {"train": split, "test": split}

    runs = {0: run(0.62, 0.125, 0.5), 1: run(0.60, 0.100, 0.4)}
    base = {0: run(0.61, 0.100, 0.5), 1: run(0.62, 0.125)}  # seed 1 without an oracle score
    gains = paired_gains(runs, base)["test"]
    assert gains["reward"]["mean"] == pytest.approx((0.01 - 0.02) / 2)
    assert gains["reward"]["std"] == pytest.approx(0.03 / 2**0.5)
    assert gains["oracle_accuracy"]["mean"] == pytest.approx(0.0) and gains["oracle_accuracy"]["seeds"] == 2
    assert gains["oracle_score"] == {"mean": 0.0, "std": None, "seeds": 1}
    assert signed_cell(gains["reward"]) == "−0.005 ± 0.021" and signed_cell(gains["oracle_score"]) == "+0.000"


def test_a_run_killed_mid_way_keeps_the_time_it_had_taken(tmp_path, monkeypatch):
    """The study process dies (here: interrupted at the third poll) while its run is going: the seconds up to
    the last poll are in study_time.json, added to what earlier launches recorded."""
    clock = iter([100.0, 105.0, 110.0, 115.0])

    class Killed(Exception):
        pass

    class Process:
        polls = 0

        def wait(self, timeout):
            self.polls += 1
            if self.polls == 3:
                raise Killed
            raise subprocess.TimeoutExpired("alignlab.run", timeout)

    # study_runs' own references only: patching the time and subprocess modules would reach other threads
    monkeypatch.setattr(study_runs, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    monkeypatch.setattr(study_runs, "subprocess", SimpleNamespace(
        Popen=lambda *args, **kwargs: Process(), STDOUT=subprocess.STDOUT, TimeoutExpired=subprocess.TimeoutExpired))
    (tmp_path / ".hydra").mkdir()  # the run had started
    study_runs.add_time(tmp_path, "run_s", 7.0)  # an earlier launch of the same run
    with pytest.raises(Killed):
        study_runs.launch(tmp_path, ["seed=0"], 20, "test")
    assert study_runs.wall_time(tmp_path) == {"run_s": 7.0 + 10.0}


def test_the_time_is_written_once_the_run_has_started(tmp_path, monkeypatch):
    """alignlab.run refuses a directory with files it did not write, so a poll before the run has started (its
    .hydra/ exists) writes nothing; the seconds are counted at the next poll."""
    clock = iter([100.0, 105.0, 110.0, 115.0])

    class Process:
        polls, returncode = 0, 0

        def wait(self, timeout):
            self.polls += 1
            if self.polls == 2:  # the run starts between the first and the second poll
                assert not (tmp_path / "study_time.json").exists()
                (tmp_path / ".hydra").mkdir()
            if self.polls < 3:
                raise subprocess.TimeoutExpired("alignlab.run", timeout)

    monkeypatch.setattr(study_runs, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    monkeypatch.setattr(study_runs, "subprocess", SimpleNamespace(
        Popen=lambda *args, **kwargs: Process(), STDOUT=subprocess.STDOUT, TimeoutExpired=subprocess.TimeoutExpired))
    study_runs.launch(tmp_path, ["seed=0"], 20, "test")
    assert study_runs.wall_time(tmp_path) == {"run_s": 15.0}


@pytest.mark.slow
def test_shared_arms_are_one_run_and_a_rerun_redoes_nothing(out):
    rows = {e: json.loads((out / e / "results.json").read_text())["rows"] for e in RL_EXPERIMENTS}
    assert rows["b2diffurl"]["ddpo"]["runs"] == rows["dfusion"]["ddpo"]["runs"]
    assert rows["b2diffurl"]["b2diffurl"]["runs"] == rows["combos"]["b2diffurl"]["runs"]
    times = {path: path.read_text() for path in out.glob("runs/*/seed0/study_time.json")}
    # distinct arms: AsynDM 6, DDPO and B²-DiffuRL, D-Fusion's 5, combos' 2, the objectives' 5
    assert len(times) == 6 + 2 + 5 + 2 + 5
    result = study("all", "--smoke", "--out", str(out))
    assert result.returncode == 0 and result.stdout.count("finished already") == 6 + 2 + 6 + 3 + 7
    assert {path: path.read_text() for path in out.glob("runs/*/seed0/study_time.json")} == times
