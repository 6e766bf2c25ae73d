"""Preference pairs from ranked samples of one prompt."""

from __future__ import annotations

import torch

from alignlab.errors import ConfigError


def dfusion_pairs(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """D-Fusion's pairing of a prompt's n samples (n a multiple of 4): the top n/4 are references,
    each used twice; the bottom n/2, best first, are bases; the middle quarter is dropped.
    Pair j = (reference j // 2, base j). Returns (reference indices, base indices), n/2 each."""
    n = rewards.numel()
    if n == 0 or n % 4:
        raise ConfigError(f"D-Fusion needs a multiple of 4 samples per prompt (method.samples_per_prompt), got {n}")
    order = torch.argsort(rewards, descending=True, stable=True)
    references = order[: n // 4].repeat_interleave(2)
    bases = order[n // 2 :]
    return references, bases


def best_worst_pairs(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The naive baseline's pairs from the same ranking: the i-th best against the i-th worst, for the
    top and bottom halves (n // 2 pairs). Returns (winner indices, loser indices)."""
    n = rewards.numel()
    if n < 2:
        raise ConfigError(f"preference pairs need at least 2 samples per prompt, got {n}")
    order = torch.argsort(rewards, descending=True, stable=True)
    return order[: n // 2], order.flip(0)[: n // 2]


def grouped_pairs(rewards: torch.Tensor, group_size: int, pair) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a pairing rule (`dfusion_pairs`, `best_worst_pairs`) to each consecutive group of
    `group_size` samples (one prompt's) and return the pairs as indices into the whole batch."""
    firsts, seconds = [], []
    for start in range(0, rewards.numel(), group_size):
        first, second = pair(rewards[start : start + group_size])
        firsts.append(first + start)
        seconds.append(second + start)
    return torch.cat(firsts), torch.cat(seconds)
