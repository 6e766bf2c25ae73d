"""Every row of docs/errors.md: the bad input gets its one line `alignlab: error: ...`, exit 2, no traceback,
and the run directory's earlier work stays as it was.

The table is the single source: each row's overrides run here as `python -m alignlab.run` would, in-process
(check_composition, then Hydra's main) to keep the suite fast; CLI_ROWS also run as real subprocesses, so the
traceback-free command line stays proven for composition, instantiation and file-system errors."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from alignlab import run
from alignlab.errors import ConfigError
from alignlab.methods.ddpo import DDPO
from tests.hydra_app import start_cli

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "docs" / "errors.md"
CLI_ROWS = {
    "method=no_such_method",
    "method=dfusion method.samples_per_prompt=6",
    "hydra.run.dir=/proc/alignlab-cannot-write",
}
PROMPT_FILES = {  # what the table's {tmp}/<name> rows point at
    "item_not_in_prompt.yaml": "train:\n- {prompt: a cat eating a sandwich, items: [dog]}\n",
    "empty.txt": "\n",
    "in_both_splits.json": '{"train": ["a cat", "a dog"], "test": ["a fox", "a cat"]}\n',
    "malformed.json": '{"train": ["a cat", "a dog"\n',
    "k_out_of_range.yaml": "train:\n- {prompt: a cat eating a sandwich, items: [cat, sandwich], k: 1.5}\n",
}
METRICS = '{"round": 0, "reward_mean": 1.0}\n'
CHECKPOINT = b"earlier work"
CONFIG = "seed: 7\n"  # the recorded config of the earlier run (alignlab.evaluate reads it)


def table_rows() -> list[tuple[str, str]]:
    """(overrides, message) of every row: the first two cells, each one code span. A message ending in '…'
    is the line's beginning."""
    rows = []
    for line in TABLE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2 and cells[0].startswith("`"):
            rows.append((cells[0].strip("`").strip(), cells[1].strip("`").strip()))
    return rows


ROWS = table_rows()


def test_the_table_is_long_and_names_the_cli_rows():
    assert len(ROWS) >= 25
    assert CLI_ROWS <= {overrides for overrides, _ in ROWS}


def with_earlier_work(run_dir: Path) -> Path:
    """`run_dir` holding a metrics row and a checkpoint; next to it, the prompt files the table uses."""
    for name, text in PROMPT_FILES.items():
        (run_dir.parent / name).write_text(text)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(CONFIG)
    (run_dir / "metrics.jsonl").write_text(METRICS)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(CHECKPOINT)
    return run_dir


def command_line(overrides: str, run_dir: Path) -> list[str]:
    """The row's overrides after the run directory and logger=none (a row may override either)."""
    row = shlex.split(overrides.replace("{tmp}", str(run_dir.parent)))
    return [f"hydra.run.dir={run_dir}", "logger=none", *row]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> dict[str, tuple[subprocess.Popen, Path]]:
    """The CLI rows as subprocesses, all started at once: they use the second core while rows run in-process."""
    runs = {}
    for overrides in sorted(CLI_ROWS):
        run_dir = with_earlier_work(tmp_path_factory.mktemp("cli") / "run")
        runs[overrides] = start_cli(*command_line(overrides, run_dir), cwd=run_dir.parent), run_dir
    yield runs
    for process, _ in runs.values():
        process.kill()  # (a no-op for those that ended)


def run_in_process(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """alignlab.run's __main__ block on `argv`, with Hydra's logging setup off so that it does not outlive the test."""
    argv = [*argv, "hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", ["alignlab.run", *argv])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as exit_:
        run.check_composition(argv)
        run.main()
    return exit_.value.code, capsys.readouterr().err


def assert_one_clear_line(code: int, stderr: str, expected: str) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line.removeprefix("alignlab: error: ") for line in stderr.splitlines()
              if line.startswith("alignlab: error: ")]
    assert len(errors) == 1, stderr
    if expected.endswith("…"):
        assert errors[0].startswith(expected[:-1]), errors[0]
    else:
        assert errors[0] == expected


def assert_kept(run_dir: Path) -> None:
    assert (run_dir / "metrics.jsonl").read_text() == METRICS
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == CHECKPOINT
    assert (run_dir / ".hydra" / "config.yaml").read_text() == CONFIG


@pytest.mark.parametrize("overrides,message", ROWS, ids=[overrides for overrides, _ in ROWS])
def test_bad_input_is_one_clear_line_and_keeps_the_run(overrides, message, tmp_path, offline, monkeypatch, capsys,
                                                       cli_runs):  # (cli_runs: started before the first row)
    run_dir = with_earlier_work(tmp_path / "run")
    code, stderr = run_in_process(command_line(overrides, run_dir), monkeypatch, capsys)
    assert_one_clear_line(code, stderr, message.replace("{tmp}", str(tmp_path)))
    assert_kept(run_dir)


@pytest.mark.parametrize("overrides", sorted(CLI_ROWS))
def test_the_command_line_prints_the_same_line(overrides, cli_runs):
    process, run_dir = cli_runs[overrides]
    _, stderr = process.communicate(timeout=300)
    assert_one_clear_line(process.returncode, stderr, dict(ROWS)[overrides].replace("{tmp}", str(run_dir.parent)))
    assert_kept(run_dir)


def test_bad_input_met_in_the_first_rollout_is_one_clear_line(tmp_path, offline, monkeypatch, capsys):
    """Lightning's clean-up after an error in the first round's rollout fails in turn (`Please call
    iter(combined_loader) first`): the sentence reported must still be the bad input's."""
    def refuse(method):
        raise ConfigError("bad input met in the rollout")

    monkeypatch.setattr(DDPO, "start_round", refuse)
    argv = command_line("method=ddpo model=tiny reward=jpeg_compressibility", tmp_path / "run")
    code, stderr = run_in_process(argv, monkeypatch, capsys)
    assert_one_clear_line(code, stderr, "bad input met in the rollout")


def test_an_error_raised_while_handling_bad_input_reports_the_bad_input_and_a_bug_keeps_its_traceback():
    def raised(error, while_handling=None):
        try:
            if while_handling is not None:
                try:
                    raise while_handling
                except BaseException:
                    raise error  # noqa: B904  (the implicit context is what is tested)
            raise error
        except BaseException as caught:
            return caught

    bad_input = ConfigError("bad input")
    assert run.reported_error(raised(RuntimeError("clean-up failed"), while_handling=bad_input)) is bad_input
    assert run.reported_error(raised(RuntimeError("a bug"), while_handling=KeyError("x"))) is None
    suppressed = RuntimeError("from None")
    suppressed.__context__, suppressed.__suppress_context__ = bad_input, True
    assert run.reported_error(suppressed) is None
