"""Running the study's arms: `python -m alignlab.run` once per arm and seed, resumable and with progress, and
`alignlab.evaluate` on the result; each run directory keeps its wall time in study_time.json."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

import alignlab  # noqa: F401  (repairs the torchvision import before anything imports it)
from alignlab.training.artifacts import read_metrics

POLL_S = 5  # how often a running job's progress (rounds in metrics.jsonl) is looked at


@dataclass(frozen=True)
class Arm:
    """One configuration of a comparison: a name (its run directories' name, shared by experiments that use
    the same arm), what the tables call it, and its Hydra overrides."""

    name: str
    label: str
    overrides: tuple[str, ...]

    @property
    def method(self) -> str:
        return next(o.split("=", 1)[1] for o in self.overrides if o.startswith("method="))

    @property
    def sampler(self) -> str:
        return next((o.split("=", 1)[1] for o in self.overrides if o.startswith("sampler=")), "ddim")


def merge_overrides(*lists) -> list[str]:
    """key=value overrides in order, a later value of a key replacing the earlier one in place."""
    merged: dict[str, str] = {}
    for overrides in lists:
        for override in overrides:
            merged[override.split("=", 1)[0]] = override
    return list(merged.values())


def add_time(run_dir: Path, key: str, seconds: float) -> bool:
    """Add `seconds` to the directory's study_time.json once the run has started there (alignlab.run refuses to
    start in a directory holding files it did not write): False while it has not, so the time is added later."""
    if not (run_dir / ".hydra").is_dir():
        return False
    path = run_dir / "study_time.json"
    times = json.loads(path.read_text()) if path.exists() else {}
    times[key] = times.get(key, 0.0) + seconds
    path.write_text(json.dumps(times) + "\n")
    return True


def wall_time(run_dir: Path) -> dict[str, float]:
    """Seconds spent running and evaluating this run directory, summed over every study invocation."""
    path = run_dir / "study_time.json"
    return json.loads(path.read_text()) if path.exists() else {}


def check_overrides(run_dir: Path, overrides: list[str]) -> None:
    """A run directory is only resumed by the command that made it."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if path.exists() and (yaml.safe_load(path.read_text()) or []) != overrides:
        raise SystemExit(f"study: {run_dir} was made with other overrides than {' '.join(overrides)}; "
                         "remove it or pick another --out")


def launch(run_dir: Path, overrides: list[str], rounds: int | None, tag: str) -> None:
    """`python -m alignlab.run <overrides> hydra.run.dir=<run_dir>` (an existing run directory resumes from its
    checkpoint), its output in <run_dir>/run.log; prints each round reached. The run time is added to
    study_time.json at every poll, so a study killed mid-run still counts the time its run had taken."""
    run_dir.mkdir(parents=True, exist_ok=True)
    check_overrides(run_dir, overrides)
    command = [sys.executable, "-m", "alignlab.run", *overrides, f"hydra.run.dir={run_dir.resolve()}"]
    start, shown = time.monotonic(), None
    counted = start
    with open(run_dir / "run.log", "a") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        while True:
            try:
                process.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                now = time.monotonic()
                if add_time(run_dir, "run_s", now - counted):
                    counted = now
                done = len(read_metrics(run_dir / "metrics.jsonl"))
                if rounds and done != shown:
                    print(f"  {tag}: round {done}/{rounds} ({now - start:.0f} s)", flush=True)
                    shown = done
    add_time(run_dir, "run_s", time.monotonic() - counted)
    if process.returncode:
        tail = "\n".join((run_dir / "run.log").read_text().splitlines()[-15:])
        raise SystemExit(f"study: {tag} failed (exit {process.returncode}); {run_dir / 'run.log'} ends:\n{tail}")


def rl_finished(run_dir: Path) -> bool:
    """Every configured round is in metrics.jsonl and the final weights are exported."""
    config = run_dir / ".hydra" / "config.yaml"
    if not config.exists():
        return False
    rounds = yaml.safe_load(config.read_text())["trainer"]["max_epochs"]
    return (len(read_metrics(run_dir / "metrics.jsonl")) >= rounds
            and (run_dir / "lora" / "pytorch_lora_weights.safetensors").exists())


def run_rl(run_dir: Path, overrides: list[str], rounds: int, tag: str) -> None:
    if rl_finished(run_dir):
        print(f"  {tag}: finished already", flush=True)
        return
    launch(run_dir, overrides, rounds, tag)


def run_asyndm(run_dir: Path, overrides: list[str], tag: str) -> dict:
    """method=asyndm's comparison table (its run writes nothing else worth resuming)."""
    table = run_dir / "asyndm" / "table.json"
    if table.exists():
        print(f"  {tag}: finished already", flush=True)
    else:
        launch(run_dir, overrides, None, tag)
    return json.loads(table.read_text())


def evaluate(run_dir: Path, split: str, base: bool, options: dict) -> dict:
    """alignlab.evaluate's report of the run's final (or, `base`, pre-trained) weights on a split, scored by the
    world CLIP (and the oracle), kept as <run_dir>/eval/{eval,base}_<split>.json and reused when present."""
    from alignlab.evaluate import evaluate_run

    name = f"{'base' if base else 'eval'}_{split}"
    path = run_dir / "eval" / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    start = time.monotonic()
    report = evaluate_run(run_dir, split=split, base=base, name=name, rewards=["clip"], **options)
    add_time(run_dir, "eval_s", time.monotonic() - start)
    return report
