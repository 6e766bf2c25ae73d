"""Compare the runs of a sweep: one table and one plot of alignment curves.

    python -m alignlab.report multirun/2026-11-22/10-00-00     (or any directory holding run directories)

Every run directory below the given one (found by its metrics.jsonl) becomes a row labelled by its
Hydra overrides: rounds, first and last train reward, last held-out reward and, for shapes-world
prompts, the oracle's score and accuracy. Writes summary.md, summary.json and curves.png there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from alignlab.errors import ConfigError  # noqa: E402
from alignlab.training.artifacts import read_metrics  # noqa: E402

COLUMNS = ["rounds", "reward_first", "reward_last", "eval/reward_mean", "oracle_score_first", "oracle_score_last",
           "oracle_accuracy_last", "eval/oracle_accuracy"]


def run_label(run_dir: Path, root: Path) -> str:
    """The run's Hydra overrides (what differs between sweep jobs), else its path below the root."""
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        values = yaml.safe_load(overrides.read_text()) or []
        if values:
            return " ".join(values)
    return str(run_dir.relative_to(root)) if run_dir != root else run_dir.name


def summarise(rows: list[dict]) -> dict:
    first, last = rows[0], rows[-1]
    summary = {"rounds": len(rows), "reward_first": first.get("reward_mean"), "reward_last": last.get("reward_mean"),
               "oracle_score_first": first.get("oracle_score"), "oracle_score_last": last.get("oracle_score"),
               "oracle_accuracy_last": last.get("oracle_accuracy")}
    for key in ("eval/reward_mean", "eval/oracle_accuracy"):
        values = [r[key] for r in rows if key in r]
        summary[key] = values[-1] if values else None
    return summary


def collect(root: Path) -> dict[str, dict]:
    runs = {}
    for metrics in sorted(root.rglob("metrics.jsonl"), key=lambda p: str(p)):
        rows = read_metrics(metrics)
        if rows:
            run_dir = metrics.parent
            runs[run_label(run_dir, root)] = {"dir": str(run_dir), "rows": rows, **summarise(rows)}
    if not runs:
        raise ConfigError(f"no run directories (with a metrics.jsonl) under '{root}'")
    return runs


def _cell(value) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def write_summary(root: Path) -> dict[str, dict]:
    runs = collect(root)
    lines = ["| run | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    lines += [f"| {label} | " + " | ".join(_cell(run[c]) for c in COLUMNS) + " |" for label, run in runs.items()]
    (root / "summary.md").write_text(f"# Sweep summary: {root}\n\n" + "\n".join(lines) + "\n")
    (root / "summary.json").write_text(json.dumps({k: {c: v[c] for c in ["dir", *COLUMNS]} for k, v in runs.items()},
                                                  indent=2) + "\n")
    gold = any(r.get("oracle_score_first") is not None for r in runs.values())
    fig, axes = plt.subplots(1, 2 if gold else 1, figsize=(12 if gold else 6, 4), squeeze=False)
    for label, run in runs.items():
        rounds = [r["round"] for r in run["rows"]]
        axes[0, 0].plot(rounds, [r["reward_mean"] for r in run["rows"]], marker=".", label=label)
        if gold:
            axes[0, 1].plot(rounds, [r.get("oracle_score") for r in run["rows"]], marker=".", label=label)
    for ax, title in zip(axes[0], ["train reward", "oracle score (world ground truth)"], strict=False):
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / "curves.png", dpi=100)
    plt.close(fig)
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="a multirun directory (or any directory holding run directories)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    try:
        if not root.is_dir():
            raise ConfigError(f"no such directory '{root}'")
        write_summary(root)
    except ConfigError as error:
        raise SystemExit(f"alignlab.report: {error}") from None
    print((root / "summary.md").read_text())


if __name__ == "__main__":
    main()
