"""One RL round = one Lightning epoch: the training dataloader's iterator asks the method for a fresh
rollout, then yields the micro-batches the update trains on (the pattern of Lightning's PPO example) and, last,
END_OF_ROUND, the batch in which the method ends its round (evaluation, metrics row) before Lightning calls the
callbacks' on_train_epoch_end."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

from torch.utils.data import DataLoader, IterableDataset

END_OF_ROUND = {"end_of_round": True}


def is_end_of_round(batch: dict) -> bool:
    """Whether `batch` is END_OF_ROUND (the loader hands out a copy of it, so not by identity)."""
    return batch.get("end_of_round", False)


class RoundDataset(IterableDataset):
    def __init__(self, method):
        self.method = method

    def __iter__(self) -> Iterator[dict]:
        return iter(self.method.round_batches())

    def __len__(self) -> int:
        return self.method.micro_batches_per_round() + 1  # and END_OF_ROUND


# The round dataset is read in the main process (num_workers=0), where its length is exact; and the
# frozen VAE / text encoder are in eval mode on purpose. Lightning warns about both.
warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined.*")
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def round_loader(method) -> DataLoader:
    return DataLoader(RoundDataset(method), batch_size=None, num_workers=0)
