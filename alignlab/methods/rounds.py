"""One RL round = one Lightning epoch: the training dataloader's iterator asks the method for a fresh
rollout, then yields the micro-batches the update trains on (the pattern of Lightning's PPO example)."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DataLoader, IterableDataset


class RoundDataset(IterableDataset):
    def __init__(self, method):
        self.method = method

    def __iter__(self) -> Iterator[dict]:
        return iter(self.method.start_round())

    def __len__(self) -> int:
        return self.method.micro_batches_per_round()


def round_loader(method) -> DataLoader:
    return DataLoader(RoundDataset(method), batch_size=None, num_workers=0)
