"""python -m alignlab.report: a sweep's runs summarised from their metrics.jsonl, labelled by overrides."""

import json

import pytest

from alignlab.report import main, write_summary


def _run(directory, overrides, rows):
    (directory / ".hydra").mkdir(parents=True)
    (directory / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_summary_reads_first_last_and_eval_values(tmp_path):
    _run(tmp_path / "0", ["method=ddpo"], [
        {"round": 0, "reward_mean": 0.1, "oracle_score": 0.3, "oracle_accuracy": 0.0},
        {"round": 1, "reward_mean": 0.4, "oracle_score": 0.5, "oracle_accuracy": 0.25, "eval/reward_mean": 0.35}])
    _run(tmp_path / "1", ["method=b2diffurl"], [{"round": 0, "reward_mean": 0.2}])
    runs = write_summary(tmp_path)
    assert list(runs) == ["method=ddpo", "method=b2diffurl"]
    ddpo = json.loads((tmp_path / "summary.json").read_text())["method=ddpo"]
    assert (ddpo["rounds"], ddpo["reward_first"], ddpo["reward_last"], ddpo["eval/reward_mean"]) == (2, 0.1, 0.4, 0.35)
    assert (ddpo["oracle_score_first"], ddpo["oracle_score_last"], ddpo["oracle_accuracy_last"]) == (0.3, 0.5, 0.25)
    b2 = runs["method=b2diffurl"]
    assert b2["reward_last"] == 0.2 and b2["eval/reward_mean"] is None and b2["oracle_score_first"] is None
    table = (tmp_path / "summary.md").read_text()
    assert "| method=ddpo | 2 | 0.1 | 0.4 | 0.35 | 0.3 | 0.5 | 0.25 |  |" in table
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_a_directory_without_runs_is_one_sentence(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path)])
    assert stopped.value.code == 2  # like alignlab.run and alignlab.evaluate
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("alignlab: error: ") and "no run directories" in line


def test_labels_keep_only_what_differs_between_runs(tmp_path):
    _run(tmp_path / "0", ["model=tiny", "seed=0", "logger=none"], [{"round": 0, "reward_mean": 0.1}])
    _run(tmp_path / "1", ["model=tiny", "seed=1", "logger=none"], [{"round": 0, "reward_mean": 0.2}])
    _run(tmp_path / "2", ["model=tiny", "seed=1", "logger=none"], [{"round": 0, "reward_mean": 0.3}])  # a rerun
    runs = write_summary(tmp_path)
    assert {label: run["reward_last"] for label, run in runs.items()} == {"seed=0": 0.1, "seed=1": 0.2,
                                                                         "seed=1 (2)": 0.3}
    assert "Every run: `model=tiny logger=none`" in (tmp_path / "summary.md").read_text()


def test_runs_that_differ_only_by_seed_pool_into_mean_and_std(tmp_path):
    for i, (method, seed, reward) in enumerate([("ddpo", 0, 0.1), ("ddpo", 1, 0.3), ("ddpo", 2, 0.5),
                                                ("b2diffurl", 0, 0.2)]):
        _run(tmp_path / str(i), [f"method={method}", f"seed={seed}", "logger=none"],
             [{"round": 0, "reward_mean": 0.0}, {"round": 1, "reward_mean": reward}])
    write_summary(tmp_path)
    seeds = json.loads((tmp_path / "summary_seeds.json").read_text())
    assert seeds["method=ddpo"]["runs"] == ["method=ddpo seed=0", "method=ddpo seed=1", "method=ddpo seed=2"]
    ddpo = seeds["method=ddpo"]["reward_last"]
    assert (ddpo["seeds"], ddpo["mean"], ddpo["std"]) == (3, pytest.approx(0.3), pytest.approx(0.2))  # sample std
    assert seeds["method=b2diffurl"]["reward_last"] == {"mean": 0.2, "std": None, "seeds": 1}
    assert seeds["method=ddpo"]["eval/reward_mean"] is None
    table = (tmp_path / "summary.md").read_text()
    assert "| method=ddpo | 3 | 2 ± 0 | 0 ± 0 | 0.3 ± 0.2 |" in table
    assert "| method=b2diffurl | 1 | 2 | 0 | 0.2 |" in table
    assert "| method=ddpo seed=1 | 2 | 0 | 0.3 |" in table  # the per-run rows stay


def test_seeds_pool_where_a_number_is_missing_in_some_runs(tmp_path):
    """A sweep over world and non-world prompts: the oracle curve has NaN rounds (statistics.stdev crashed on
    them), and a round that only one seed reached or reported has a mean but no band."""
    _run(tmp_path / "w", ["prompts=shapes", "seed=0"], [{"round": 0, "reward_mean": 0.1, "oracle_score": 0.5}])
    _run(tmp_path / "s0", ["prompts=simple", "seed=0"], [{"round": 0, "reward_mean": 0.2},
                                                         {"round": 1, "reward_mean": 0.4}])
    _run(tmp_path / "s1", ["prompts=simple", "seed=1"], [{"round": 0, "reward_mean": 0.3},
                                                         {"round": 1, "reward_mean": float("nan")}])
    write_summary(tmp_path)
    simple = json.loads((tmp_path / "summary_seeds.json").read_text())["prompts=simple"]
    assert simple["reward_first"] == {"mean": pytest.approx(0.25), "std": pytest.approx(0.0707107), "seeds": 2}
    assert simple["reward_last"] == {"mean": 0.4, "std": None, "seeds": 1}  # the NaN one left out
    assert simple["oracle_score_last"] is None
    assert (tmp_path / "curves.png").stat().st_size > 0
