"""EvalCallback: held-out evaluation during training, into the round's metrics row."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from alignlab.errors import ConfigError
from alignlab.eval.evaluate import evaluate_prompts, select_prompts
from alignlab.training.artifacts import sample_captions, sample_grid
from alignlab.world.oracle import oracle_stats

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
    samples/eval_round_NNNN.png. Training is untouched: own generators, no gradients, modes restored."""

    def __init__(self, run_dir: str | Path, every: int = 0, samples_per_prompt: int = 2, max_prompts: int = 8,
                 split: str = "test", batch_size: int = 8):
        if every < 0:
            raise ConfigError(f"eval.every must be >= 0 (0: off), got {every}")
        if split not in ("test", "train"):
            raise ConfigError(f"eval.split must be test or train, got {split!r}")
        for key, value in [("samples_per_prompt", samples_per_prompt), ("max_prompts", max_prompts),
                           ("batch_size", batch_size)]:
            if value < 1:
                raise ConfigError(f"eval.{key} must be >= 1, got {value}")
        self.run_dir = Path(run_dir)
        self.every, self.samples_per_prompt, self.max_prompts = every, samples_per_prompt, max_prompts
        self.split, self.batch_size = split, batch_size

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        round_no = pl_module.round_index  # the round just finished (finish_round has not run yet)
        if not trainer.is_global_zero or not eval_due(round_no, self.every, trainer.max_epochs):
            return
        prompts, used = select_prompts(pl_module.prompts, self.split, self.max_prompts)
        if used != self.split:
            log.warning("eval: the prompt set has no %s prompts; evaluating on train prompts", self.split)
            pl_module.stats["eval_fallback_to_train"].append(1.0)
        result = evaluate_prompts(pl_module.model, pl_module.sampler, pl_module.reward, prompts,
                                  self.samples_per_prompt, self.batch_size, pl_module.seed,
                                  prompt_set=pl_module.prompts)
        pl_module.stats["eval/reward_mean"].append(result["reward_mean"])
        pl_module.stats["eval/reward_std"].append(result["reward_std"])
        for key, value in oracle_stats(result["images"], result["prompts"], prefix="eval/").items():
            pl_module.stats[key].append(value)
        captions = sample_captions(result["images"], result["prompts"], result["rewards"])
        grid = sample_grid(result["images"], captions, self.samples_per_prompt if self.samples_per_prompt > 1 else 4,
                           title=f"evaluation on {used} prompts, after round {round_no}")
        (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
        grid.save(self.run_dir / "samples" / f"eval_round_{round_no:04d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("eval", [grid], step=round_no, caption=[f"eval round {round_no}"])
