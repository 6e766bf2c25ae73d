"""Compare the runs of a sweep: one table and one plot of alignment curves.

    python -m alignlab.report multirun/2026-11-22/10-00-00     (or any directory holding run directories)

Every run directory below the given one (found by its metrics.jsonl) becomes a row labelled by the Hydra
overrides that set it apart from the others (those all runs share head the table): rounds, first and last
train reward, last held-out reward and, for shapes-world prompts, the oracle's score and accuracy. Runs
whose overrides differ only by `seed=` are pooled into one more table, of mean ± std across seeds
(summary_seeds.json), and curves.png then shows each group's mean with a ± std band. Writes summary.md,
summary.json and curves.png there. A multirun writes them itself (alignlab.sweeps).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from alignlab.errors import ConfigError  # noqa: E402
from alignlab.training.artifacts import read_metrics  # noqa: E402

COLUMNS = ["rounds", "reward_first", "reward_last", "eval/reward_mean", "oracle_score_first", "oracle_score_last",
           "oracle_accuracy_last", "eval/oracle_accuracy"]


def run_overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    return (yaml.safe_load(path.read_text()) or []) if path.is_file() else []


def run_labels(run_dirs: list[Path], root: Path) -> tuple[list[str], list[str]]:
    """Each run's Hydra overrides that not every run shares (what differs between sweep jobs), else its path
    below the root; and the overrides every run shares."""
    overrides = [run_overrides(d) for d in run_dirs]
    shared = set.intersection(*map(set, overrides)) if len(overrides) > 1 else set()
    labels = []
    for run_dir, values in zip(run_dirs, overrides, strict=True):
        path = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
        label = " ".join(v for v in values if v not in shared) or path
        labels.append(f"{label} ({path})" if label in labels else label)
    return labels, [v for v in overrides[0] if v in shared]


def summarise(rows: list[dict]) -> dict:
    first, last = rows[0], rows[-1]
    summary = {"rounds": len(rows), "reward_first": first.get("reward_mean"), "reward_last": last.get("reward_mean"),
               "oracle_score_first": first.get("oracle_score"), "oracle_score_last": last.get("oracle_score"),
               "oracle_accuracy_last": last.get("oracle_accuracy")}
    for key in ("eval/reward_mean", "eval/oracle_accuracy"):
        values = [r[key] for r in rows if key in r]
        summary[key] = values[-1] if values else None
    return summary


def collect(root: Path) -> tuple[dict[str, dict], list[str]]:
    """The runs below root by label, and the overrides they all share."""
    found = [(m.parent, read_metrics(m)) for m in sorted(root.rglob("metrics.jsonl"), key=lambda p: str(p))]
    found = [(run_dir, rows) for run_dir, rows in found if rows]
    if not found:
        raise ConfigError(f"no run directories (with a metrics.jsonl) under '{root}'")
    labels, shared = run_labels([run_dir for run_dir, _ in found], root)
    runs = {label: {"dir": str(run_dir), "rows": rows, **summarise(rows)}
            for label, (run_dir, rows) in zip(labels, found, strict=True)}
    return runs, shared


def _cell(value) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def across_seeds(values: list) -> dict | None:
    """{"mean", "std", "seeds"} of one number over seeds (None and NaN values left out; std: the sample standard
    deviation, None for one seed); None when no seed has the number."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "seeds": len(values)}


def mean_std_cell(stats: dict | None) -> str:
    """A table cell "mean ± std" (the mean alone for one seed)."""
    if stats is None:
        return ""
    return f"{stats['mean']:.4g}" if stats["std"] is None else f"{stats['mean']:.4g} ± {stats['std']:.2g}"


def seed_groups(runs: dict[str, dict], shared: list[str]) -> dict[str, list[str]]:
    """Run labels grouped by their overrides without `seed=` (and without those every run shares)."""
    groups: dict[str, list[str]] = {}
    for label, run in runs.items():
        rest = [o for o in run_overrides(Path(run["dir"])) if o not in shared and o.lstrip("+").split("=")[0] != "seed"]
        groups.setdefault(" ".join(rest) or "all runs", []).append(label)
    return groups


def plot_mean_std(ax, x: list[float], series: list[list[float]], label: str) -> None:
    """One curve: the mean over `series` (one list per seed, cut to the shortest) with a ± std band."""
    length = min(len(x), *map(len, series))
    points = [across_seeds([s[i] for s in series]) or {"mean": math.nan, "std": None} for i in range(length)]
    mean = [p["mean"] for p in points]
    line, = ax.plot(x[:length], mean, marker=".", label=f"{label} (n={len(series)})" if len(series) > 1 else label)
    if len(series) > 1:  # (rounds where fewer than two seeds have the number get no band)
        std = [math.nan if p["std"] is None else p["std"] for p in points]
        ax.fill_between(x[:length], [m - d for m, d in zip(mean, std, strict=True)],
                        [m + d for m, d in zip(mean, std, strict=True)], alpha=0.2, color=line.get_color())


def write_summary(root: Path) -> dict[str, dict]:
    runs, shared = collect(root)
    lines = [f"# Sweep summary: {root}", ""] + ([f"Every run: `{' '.join(shared)}`", ""] if shared else [])
    lines += ["| run | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    lines += [f"| {label} | " + " | ".join(_cell(run[c]) for c in COLUMNS) + " |" for label, run in runs.items()]
    (root / "summary.json").write_text(json.dumps({k: {c: v[c] for c in ["dir", *COLUMNS]} for k, v in runs.items()},
                                                  indent=2) + "\n")
    groups = seed_groups(runs, shared)
    pooled = any(len(labels) > 1 for labels in groups.values())
    if pooled:
        by_group = {group: {"runs": labels, **{c: across_seeds([runs[r][c] for r in labels]) for c in COLUMNS}}
                    for group, labels in groups.items()}
        lines += ["", "## Mean ± std across seeds", "", "| runs | seeds | " + " | ".join(COLUMNS) + " |",
                  "|---|---:|" + "---:|" * len(COLUMNS)]
        lines += [f"| {group} | {len(row['runs'])} | " + " | ".join(mean_std_cell(row[c]) for c in COLUMNS) + " |"
                  for group, row in by_group.items()]
        (root / "summary_seeds.json").write_text(json.dumps(by_group, indent=2) + "\n")
    (root / "summary.md").write_text("\n".join(lines) + "\n")
    gold = any(r.get("oracle_score_first") is not None for r in runs.values())
    fig, axes = plt.subplots(1, 2 if gold else 1, figsize=(12 if gold else 6, 4), squeeze=False)
    for label, members in (groups.items() if pooled else ((label, [label]) for label in runs)):
        rows = [runs[m]["rows"] for m in members]
        rounds = [r["round"] for r in max(rows, key=len)]
        plot_mean_std(axes[0, 0], rounds, [[r["reward_mean"] for r in run] for run in rows], label)
        if gold:
            plot_mean_std(axes[0, 1], rounds, [[r.get("oracle_score", float("nan")) for r in run] for run in rows],
                          label)
    save_panels(fig, axes[0], ["train reward", "oracle score (world ground truth)"], "round", root / "curves.png")
    return runs


def save_panels(fig, axes, titles: list[str], xlabel: str, path: Path) -> None:
    """Title, grid and legend on each panel (extra titles are ignored), then the figure as a PNG."""
    for ax, title in zip(axes, titles, strict=False):
        ax.set(title=title, xlabel=xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
        from alignlab.run import say_error

        say_error(str(error))
        sys.exit(2)
    print((root / "summary.md").read_text())


if __name__ == "__main__":
    main()
