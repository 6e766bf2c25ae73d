"""Held-out evaluation during training: at a due round's end the method asks it for the round's eval/* stats."""

from __future__ import annotations

import logging
from pathlib import Path

from alignlab.errors import ConfigError, require_at_least_one
from alignlab.eval.evaluate import evaluate_prompts, select_prompts
from alignlab.eval.hacking import reward_hacking
from alignlab.eval.judge import judge_images, oracle_stats
from alignlab.training.artifacts import read_metrics

log = logging.getLogger("alignlab")


def eval_due(round_index: int, every: int, max_rounds: int | None) -> bool:
    """After every `every`-th round (round_index counts from 0) and after the last; never when every <= 0."""
    if every <= 0:
        return False
    last = max_rounds is not None and max_rounds > 0 and round_index + 1 >= max_rounds
    return (round_index + 1) % every == 0 or last


class HeldOutEvaluation:
    """The first `max_prompts` prompts of the split, `samples_per_prompt` images each with fixed seeds, under
    the current weights (own generators, no gradients, modes restored: training is untouched). Where the prompts
    have a gold metric (the world's oracle), it watches for reward hacking (eval/hacking.py) over this run's
    evaluations: the alarm becomes a warning, eval/reward_hacking = 1 in the round's row and a W&B alert
    (RoundRecorder). The method runs it inside its round (RLMethod.end_round), so the row it writes is complete
    before any callback reads it."""

    def __init__(self, run_dir: str | Path, every: int = 0, samples_per_prompt: int = 2, max_prompts: int = 8,
                 split: str = "test", batch_size: int = 8, hacking_window: int = 3, hacking_tolerance: float = 0.01):
        if every < 0:
            raise ConfigError(f"eval.every must be >= 0 (0: off), got {every}")
        if split not in ("test", "train"):
            raise ConfigError(f"eval.split must be test or train, got {split!r}")
        require_at_least_one("eval", samples_per_prompt=samples_per_prompt, max_prompts=max_prompts,
                             batch_size=batch_size)
        if hacking_window < 0 or hacking_tolerance < 0:
            raise ConfigError(f"eval.hacking_window and eval.hacking_tolerance must be >= 0, got {hacking_window} "
                              f"and {hacking_tolerance}")
        self.hacking_window, self.hacking_tolerance = hacking_window, hacking_tolerance
        self.run_dir = Path(run_dir)
        self.every, self.samples_per_prompt, self.max_prompts = every, samples_per_prompt, max_prompts
        self.split, self.batch_size = split, batch_size

    def due(self, round_index: int, max_rounds: int | None) -> bool:
        return eval_due(round_index, self.every, max_rounds)

    def __call__(self, method) -> dict:
        """Evaluate `method`'s model -> {"stats": the round's eval/* values, "split" evaluated, "images",
        "prompts", "rewards" (one per row), "scored" (the gold metric's verdicts or None), "alarm" (or None),
        "columns" of its sample grid (a prompt's images in a row)}."""
        prompts, used = select_prompts(method.prompts, self.split, self.max_prompts)
        stats = {}
        if used != self.split:
            log.warning("eval: the prompt set has no %s prompts; evaluating on train prompts", self.split)
            stats["eval_fallback_to_train"] = 1.0
        result = evaluate_prompts(method.model, method.sampler, method.reward, prompts, self.samples_per_prompt,
                                  self.batch_size, method.seed, prompt_set=method.prompts)
        stats["eval/reward_mean"], stats["eval/reward_std"] = result["reward_mean"], result["reward_std"]
        scored = judge_images(method.prompts, result["images"], result["prompts"])  # once: stats, captions, table
        gold = oracle_stats(scored, prefix="eval/")
        stats.update(gold)
        alarm = self.watch_for_hacking(result["reward_mean"], gold.get("eval/oracle_score"))
        if gold:
            stats["eval/reward_hacking"] = float(alarm is not None)
        columns = self.samples_per_prompt if self.samples_per_prompt > 1 else 4
        return {"stats": stats, "split": used, "scored": scored, "alarm": alarm, "columns": columns,
                **{key: result[key] for key in ("images", "prompts", "rewards")}}

    def watch_for_hacking(self, proxy: float, gold: float | None) -> str | None:
        """The alarm over this run's evaluations so far (earlier ones from metrics.jsonl, so resumes keep them)."""
        if gold is None or self.hacking_window < 2:
            return None
        rows = [r for r in read_metrics(self.run_dir / "metrics.jsonl") if "eval/oracle_score" in r]
        alarm = reward_hacking([r["eval/reward_mean"] for r in rows] + [proxy],
                               [r["eval/oracle_score"] for r in rows] + [gold], self.hacking_window,
                               self.hacking_tolerance)
        if alarm:
            log.warning(alarm)
        return alarm
