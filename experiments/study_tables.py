"""The study's numbers: per run from its own files (alignlab.evaluate's reports, metrics.jsonl, method=asyndm's
table.json), mean ± std across seeds with alignlab.report's `across_seeds`, written as results.json, a
markdown table and a PNG per experiment."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from alignlab.samplers.asyn import VARIANTS  # noqa: E402
from alignlab.report import across_seeds, mean_std_cell, plot_mean_std, save_panels  # noqa: E402
from alignlab.world.grammar import CATEGORIES  # noqa: E402
from alignlab.world.oracle import by_category  # noqa: E402

SPLITS = ("train", "test")
EVAL_METRICS = {"reward": "world-CLIP (proxy)", "oracle_score": "oracle score (gold)",
                "oracle_accuracy": "oracle accuracy (gold)", "diversity": "diversity"}
VARIANT_METRICS = {"reward_mean": "world-CLIP (proxy)", "win_rate_vs_dm": "CLIP win rate vs DM",
                   "oracle_score": "oracle score (gold)", "oracle_accuracy": "oracle accuracy (gold)"}
GOLD = ("oracle_score", "oracle_accuracy")
GAIN_METRICS = ("reward", "oracle_score", "oracle_accuracy")
TARGET_GAIN, GAIN_WINDOW = 0.10, 3  # issue "Objectives": images and time to +0.10 train strict accuracy
TO_GAIN = ("round", "images", "seconds", "test_gain")
DIFFERENCES = {"delta_vs_dm": "world-CLIP", "oracle_score_vs_dm": "oracle score",
               "oracle_accuracy_vs_dm": "oracle accuracy"}  # paired: a variant minus DM on the same noise


def eval_numbers(report: dict) -> dict:
    """The numbers of one alignlab.evaluate report that the tables show."""
    return {"reward": report["rewards"]["clip"]["reward_mean"],
            **{key: report.get(key) for key in ("oracle_score", "oracle_accuracy", "diversity")}}


def curve(rows: list[dict]) -> dict[str, list]:
    """Held-out evaluation during training against the images sampled so far (the round's included)."""
    images, points = 0.0, {"images": [], "reward": [], "oracle_score": []}
    for row in rows:
        images += row.get("samples_per_round", 0.0)
        if "eval/reward_mean" in row:
            points["images"].append(images)
            points["reward"].append(row["eval/reward_mean"])
            points["oracle_score"].append(row.get("eval/oracle_score"))
    return points


def images_to_gain(rows: list[dict], start: float, start_test: float, gain: float = TARGET_GAIN,
                   window: int = GAIN_WINDOW) -> dict:
    """When the policy first reaches `start` + `gain` strict accuracy on the train prompts: the first round whose
    rollouts, with the `window` - 1 rounds before it, are that accurate on the oracle (the policy's own samples of
    the train prompts, so no extra sampling; a window of rounds, because one round's 64 images move by +-0.05).
    Images and seconds (rollouts and updates; a round with nothing to train has no update) up to that round, and
    the held-out gain there: the first held-out evaluation at or after it minus `start_test` (the pre-trained
    weights' test accuracy). All None when never."""
    accuracy = [row.get("oracle_accuracy") for row in rows]
    for end in range(window, len(rows) + 1):
        recent = accuracy[end - window : end]
        if None not in recent and sum(recent) / window >= start + gain:
            later = [row["eval/oracle_accuracy"] for row in rows[end - 1 :] if "eval/oracle_accuracy" in row]
            return {"round": end, "images": sum(row["samples_per_round"] for row in rows[:end]),
                    "seconds": sum(row["time_rollout"] + row.get("time_update", 0.0) for row in rows[:end]),
                    "test_gain": later[0] - start_test if later else None}
    return dict.fromkeys(TO_GAIN)


def pooled(runs: dict, *keys: str) -> dict | None:
    """across_seeds of runs[seed][keys[0]][keys[1]]... (a missing key: that seed has no value)."""
    values = []
    for run in runs.values():
        value = run
        for key in keys:
            value = None if value is None else value.get(key)
        values.append(value)
    return across_seeds(values)


def asyndm_numbers(table: dict) -> dict:
    """Per variant: method=asyndm's own reward, win rate and oracle numbers, and the oracle accuracy per world
    category of its per-image verdicts."""
    prompts = [row["prompt"] for row in table["per_image"]]
    numbers = {}
    for variant in VARIANTS:
        row = {key: table["variants"][variant][key] for key in [*VARIANT_METRICS, "delta_vs_dm"]}
        for key in GOLD:
            row[f"{key}_vs_dm"] = row[key] - table["variants"]["dm"][key]
        row["by_category"] = by_category(prompts, [float(r["passed"][variant]) for r in table["per_image"]])
        numbers[variant] = row
    return numbers


def header(title: str, command: str, notes: list[str]) -> list[str]:
    return [f"# {title}", "", f"Command: `{command}`", "", *notes, ""]


def time_table(wall: dict[str, dict], labels: dict[str, str]) -> list[str]:
    lines = ["## Wall time (this machine, summed over seeds)", "", "| arm | runs (s) | evaluation (s) |",
             "|---|---:|---:|"]
    lines += [f"| {labels[name]} | {t['run_s']:.0f} | {t['eval_s']:.0f} |" for name, t in wall.items()]
    total = sum(t["run_s"] + t["eval_s"] for t in wall.values())
    return lines + ["", f"Total: {total:.0f} s ({total / 60:.1f} min).", ""]


def paired_gains(runs: dict, base_runs: dict) -> dict:
    """Per split and metric: mean ± std over seeds of a run minus the pre-trained weights evaluated on the same
    seed's noise, the comparison that cancels most of the evaluation's sampling noise."""
    def gain(seed, split, key):
        value, before = runs[seed][split].get(key), base_runs[seed][split].get(key)
        return None if value is None or before is None else value - before

    return {split: {key: across_seeds([gain(seed, split, key) for seed in runs]) for key in GAIN_METRICS}
            for split in SPLITS}


def signed_cell(stats: dict | None) -> str:
    """A table cell "+mean ± std" for a difference."""
    if stats is None:
        return ""
    mean = f"{stats['mean']:+.3f}".replace("-", "−")
    return mean if stats["std"] is None else f"{mean} ± {stats['std']:.3f}"


def gain_table(rows: dict, baselines: dict[str, str]) -> list[str]:
    """How soon each arm raised train strict accuracy by +0.10 (images_to_gain), over the seeds that did."""
    lines = [f"## To +{TARGET_GAIN:.2f} train strict accuracy (rollouts, {GAIN_WINDOW}-round mean)", "",
             "| arm | seeds there | images | seconds | held-out gain there |", "|---|---:|---:|---:|---:|"]
    for name in baselines:
        row = rows[name]
        there = sum(run["to_gain"]["images"] is not None for run in row["runs"].values())
        cells = [mean_std_cell(row["to_gain"][key]) for key in ("images", "seconds")]
        lines.append(f"| {row['label']} | {there} of {len(row['runs'])} | {' | '.join(cells)} | "
                     f"{signed_cell(row['to_gain']['test_gain'])} |")
    return [*lines, ""]


def write_rl(out: Path, title: str, command: str, notes: list[str], rows: dict, wall: dict,
             baselines: dict[str, str]) -> dict:
    """rows: name -> {"label", "overrides", "runs": {seed: {"images", "train", "test", "curve"}}} (pre-trained
    rows have no curve); baselines: trained row -> its pre-trained row. Writes results.json, results.md and
    curves.png into `out`."""
    for row in rows.values():
        row["images"] = pooled(row["runs"], "images")
        for split in SPLITS:
            row[split] = {key: pooled(row["runs"], split, key) for key in EVAL_METRICS}
    for name, base in baselines.items():
        rows[name]["baseline"], rows[name]["gain"] = base, paired_gains(rows[name]["runs"], rows[base]["runs"])
        rows[name]["to_gain"] = {key: pooled(rows[name]["runs"], "to_gain", key) for key in TO_GAIN}
    lines = header(title, command, notes)
    for split in SPLITS:
        lines += [f"## {split.capitalize()} prompts" + (" (held out)" if split == "test" else ""), "",
                  "| arm | seeds | images sampled | " + " | ".join(EVAL_METRICS.values()) + " |",
                  "|---|---:|---:|" + "---:|" * len(EVAL_METRICS)]
        lines += [f"| {row['label']} | {len(row['runs'])} | {mean_std_cell(row['images'])} | "
                  + " | ".join(mean_std_cell(row[split][key]) for key in EVAL_METRICS) + " |" for row in rows.values()]
        lines.append("")
    lines += ["## Each run minus the pre-trained weights (same evaluation noise, paired per seed)", "",
              "| arm | split | " + " | ".join(EVAL_METRICS[key] for key in GAIN_METRICS) + " |",
              "|---|---|" + "---:|" * len(GAIN_METRICS)]
    lines += [f"| {rows[name]['label']} | {split} | "
              + " | ".join(signed_cell(rows[name]["gain"][split][key]) for key in GAIN_METRICS) + " |"
              for name in baselines for split in SPLITS]
    lines += ["", *gain_table(rows, baselines), "![held-out curves](curves.png)", "",
              *time_table(wall, {n: r["label"] for n, r in rows.items()})]
    (out / "results.md").write_text("\n".join(lines))
    results = {"title": title, "command": command, "rows": rows, "wall_s": wall}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for row in rows.values():
        curves = [run["curve"] for run in row["runs"].values() if "curve" in run]
        if curves:
            x = max((c["images"] for c in curves), key=len)
            for ax, key in zip(axes, ("reward", "oracle_score"), strict=True):
                plot_mean_std(ax, x, [[float("nan") if v is None else v for v in c[key]] for c in curves],
                              row["label"])
    save_panels(fig, axes, [f"held-out prompts: {name}" for name in ("world-CLIP (proxy)", "oracle score (gold)")],
                "images sampled", out / "curves.png")
    return results


def write_asyndm(out: Path, title: str, command: str, notes: list[str], arms: dict, main: str, wall: dict) -> dict:
    """arms: name -> {"label", "overrides", "runs": {seed: asyndm_numbers}}; `main` is the arm whose three
    variants get the full table. Writes results.json, results.md and asyndm.png into `out`."""
    for arm in arms.values():
        runs = arm["runs"]
        arm["variants"] = {
            v: {**{key: pooled(runs, v, key) for key in [*VARIANT_METRICS, *DIFFERENCES]},
                "by_category": {c: pooled(runs, v, "by_category", c) for c in CATEGORIES}}
            for v in VARIANTS}
    first = arms[main]
    categories = [c for c in CATEGORIES if first["variants"]["dm"]["by_category"][c] is not None]
    lines = header(title, command, notes) + [
        f"## DM vs DM_concave vs AsynDM ({first['label']})", "",
        "| variant | seeds | " + " | ".join(VARIANT_METRICS.values()) + " | "
        + " | ".join(f"accuracy: {c}" for c in categories) + " |",
        "|---|---:|" + "---:|" * (len(VARIANT_METRICS) + len(categories))]
    for v in VARIANTS:
        row = first["variants"][v]
        lines.append(f"| {v} | {len(first['runs'])} | " + " | ".join(mean_std_cell(row[k]) for k in VARIANT_METRICS)
                     + " | " + " | ".join(mean_std_cell(row["by_category"][c]) for c in categories) + " |")
    lines += ["", "## Ablations: AsynDM and DM_concave minus DM (same noise, per seed)", "",
              "| arm | seeds | AsynDM world-CLIP | AsynDM oracle accuracy | "
              + " | ".join(f"{v} − DM: {name}" for v in ("AsynDM", "DM_concave") for name in DIFFERENCES.values())
              + " |", "|---|---:|---:|---:|" + "---:|" * 2 * len(DIFFERENCES)]
    for arm in arms.values():
        a = arm["variants"]["asyndm"]
        cells = [a["reward_mean"], a["oracle_accuracy"],
                 *[arm["variants"][v][key] for v in ("asyndm", "dm_concave") for key in DIFFERENCES]]
        lines.append(f"| {arm['label']} | {len(arm['runs'])} | " + " | ".join(map(mean_std_cell, cells)) + " |")
    lines += ["", "![AsynDM](asyndm.png)", "", *time_table(wall, {n: a["label"] for n, a in arms.items()})]
    (out / "results.md").write_text("\n".join(lines))
    results = {"title": title, "command": command, "main": main, "arms": arms, "wall_s": wall}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_asyndm(out / "asyndm.png", arms, main, categories)
    return results


def _bar(ax, x: float, stats: dict | None, width: float, **style) -> None:
    if stats is not None:
        ax.bar(x, stats["mean"], width, yerr=stats["std"] or 0, capsize=2, **style)


def plot_asyndm(path: Path, arms: dict, main: str, categories: list[str]) -> None:
    """Oracle accuracy per category by variant (main arm), and each arm's differences to DM: oracle score and
    world-CLIP."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    width = 0.8 / len(VARIANTS)
    groups = [*categories, "all"]
    for i, v in enumerate(VARIANTS):
        row = arms[main]["variants"][v]
        for j, group in enumerate(groups):
            stats = row["oracle_accuracy"] if group == "all" else row["by_category"][group]
            _bar(axes[0], j + (i - 1) * width, stats, width, color=f"C{i}", label=v if j == 0 else None)
    axes[0].set_xticks(range(len(groups)), [g.replace("_", "\n") for g in groups], fontsize=8)
    axes[0].set(title=f"oracle accuracy (gold): {arms[main]['label']}", ylabel="accuracy")
    axes[0].legend(fontsize=8)
    for ax, key, name in ((axes[1], "oracle_score_vs_dm", "oracle score (gold)"),
                          (axes[2], "delta_vs_dm", "world-CLIP (proxy)")):
        for j, arm in enumerate(arms.values()):
            _bar(ax, j - width / 2, arm["variants"]["dm_concave"][key], width, color="C1",
                 label="DM_concave" if j == 0 else None)
            _bar(ax, j + width / 2, arm["variants"]["asyndm"][key], width, color="C2",
                 label="AsynDM" if j == 0 else None)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(arms)), [a["label"].split(": ")[-1] for a in arms.values()], rotation=30,
                      ha="right", fontsize=8)
        ax.set(title=f"minus DM (same noise): {name}")
        ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
