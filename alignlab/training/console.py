"""What a run prints: one line per round with its reward and gold metric, where the outputs go, and none of
the libraries' chatter (Lightning's INFO lines twice over and its logger advertisement, open_clip's loading
steps (rewards/clip.py), warnings about library internals a user cannot act on)."""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch.callbacks import RichProgressBar

from alignlab.methods.rounds import is_end_of_round

LIBRARY_WARNINGS = (  # each about Lightning's or torch's internals, or expected in alignlab's round loop
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"Your `IterableDataset` has `__len__` defined",
    r"Found \d+ module\(s\) in eval mode",
    r"Checkpoint directory .* exists and is not empty",  # a resumed run's own checkpoints
    r"The dirpath has changed from",  # a moved or copied run directory (RoundCheckpoints handles it)
)

SHOWN = {  # metrics row key -> its name on the round's line
    "reward_mean": "reward",
    "oracle_accuracy": "oracle acc",
    "eval/reward_mean": "eval reward",
    "eval/oracle_accuracy": "eval oracle acc",
}


def quiet_libraries() -> None:
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def show_round(pl_module, row: dict) -> None:
    """Put the finished round's reward and gold metric on its progress line."""
    for key, name in SHOWN.items():
        if key in row:
            pl_module.log(name, row[key], prog_bar=True, logger=False)


class RoundProgress(RichProgressBar):
    """One line per round, kept on screen: `round 3/20 ━━━ 8/8 0:00:25 reward: 0.531 oracle acc: 0.188`."""

    def __init__(self):
        super().__init__(leave=True)

    def _get_train_description(self, current_epoch: int) -> str:
        return f"round {current_epoch + 1}/{self.trainer.max_epochs}"

    def get_metrics(self, trainer, pl_module) -> dict:
        return {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k != "v_num"}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        """A round's length is known once its samples are: B²-DiffuRL's is below the bound Lightning plans with.
        The bar counts micro-batches: the round's end (END_OF_ROUND) is not one."""
        if is_end_of_round(batch):
            return
        if self.progress is not None and self.train_progress_bar_id is not None and batch_idx == 0:
            self.progress.update(self.train_progress_bar_id, total=pl_module.round_length())
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
