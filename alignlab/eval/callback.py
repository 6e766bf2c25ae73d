"""EvalCallback: held-out evaluation during training, into the round's metrics row."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from alignlab.errors import ConfigError, require_at_least_one
from alignlab.eval.evaluate import evaluate_prompts, select_prompts
from alignlab.eval.hacking import reward_hacking
from alignlab.eval.judge import judge_images, oracle_stats
from alignlab.training.artifacts import read_metrics, sample_captions, sample_grid
from alignlab.training.wandb_run import sample_table

log = logging.getLogger("alignlab")


def eval_due(round_index: int, every: int, max_rounds: int | None) -> bool:
    """After every `every`-th round (round_index counts from 0) and after the last; never when every <= 0."""
    if every <= 0:
        return False
    last = max_rounds is not None and max_rounds > 0 and round_index + 1 >= max_rounds
    return (round_index + 1) % every == 0 or last


class EvalCallback(L.Callback):
    """At a due round's end (rank 0): evaluate the first `max_prompts` prompts of the split with fixed seeds
    under the current weights, add eval/reward_mean and eval/reward_std to the method's stats (so
    RoundRecorder, which must come AFTER this callback, writes them into the round's row) and save
    samples/eval_round_NNNN.png. Training is untouched: own generators, no gradients, modes restored.
    Where the prompts have a gold metric (the world's oracle), it watches for reward hacking (eval/hacking.py):
    a one-line warning, a W&B alert and eval/reward_hacking = 1 in the round's row."""

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

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        round_no = pl_module.round_index  # the round just finished (finish_round has not run yet)
        if not trainer.is_global_zero or not eval_due(round_no, self.every, trainer.max_epochs):
            return
        start = time.perf_counter()
        prompts, used = select_prompts(pl_module.prompts, self.split, self.max_prompts)
        if used != self.split:
            log.warning("eval: the prompt set has no %s prompts; evaluating on train prompts", self.split)
            pl_module.stats["eval_fallback_to_train"].append(1.0)
        result = evaluate_prompts(pl_module.model, pl_module.sampler, pl_module.reward, prompts,
                                  self.samples_per_prompt, self.batch_size, pl_module.seed,
                                  prompt_set=pl_module.prompts)
        pl_module.stats["eval/reward_mean"].append(result["reward_mean"])
        pl_module.stats["eval/reward_std"].append(result["reward_std"])
        scored = judge_images(pl_module.prompts, result["images"], result["prompts"])  # once: stats, captions, table
        gold = oracle_stats(scored, prefix="eval/")
        for key, value in gold.items():
            pl_module.stats[key].append(value)
        alarm = self.watch_for_hacking(result["reward_mean"], gold.get("eval/oracle_score"))
        if gold:
            pl_module.stats["eval/reward_hacking"].append(float(alarm is not None))
        captions = sample_captions(result["prompts"], result["rewards"], scored)
        grid = sample_grid(result["images"], captions, self.samples_per_prompt if self.samples_per_prompt > 1 else 4,
                           title=f"evaluation on {used} prompts, after round {round_no}")
        (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
        grid.save(self.run_dir / "samples" / f"eval_round_{round_no:04d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("eval", [grid], step=round_no, caption=[f"eval round {round_no}"])
                table = sample_table(result["images"], result["prompts"], result["rewards"], round_no, scored)
                logger.experiment.log({"eval_table": table, "round": round_no})
                if alarm:
                    alert(logger, alarm)
        pl_module.stats["time_eval"].append(time.perf_counter() - start)

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


def alert(logger: WandbLogger, text: str) -> None:
    """A W&B alert (an e-mail or Slack message online); offline runs keep it in the run file."""
    import wandb

    try:
        logger.experiment.alert(title="reward hacking", text=text, level=wandb.AlertLevel.WARN)
    except Exception as error:  # noqa: BLE001 -- an alert must never stop a run
        log.warning("W&B alert not sent: %s", error)
