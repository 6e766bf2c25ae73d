"""Advantages from rewards: DDPO's per-prompt statistics tracker, the plain batch z-score and GRPO's group
normalisation."""

from __future__ import annotations

from collections import deque

import torch

EPS = 1e-6


def batch_zscore(rewards: torch.Tensor) -> torch.Tensor:
    return (rewards - rewards.mean()) / (rewards.std(unbiased=False) + EPS)


GROUP_STD = ("round_std", "group_std")


def group_zscore(groups: list, rewards: torch.Tensor, std: str = "round_std") -> torch.Tensor:
    """Each reward minus the mean of its group (rows with the same key: a prompt's samples in the round, a branch
    family's siblings), divided by the whole round's std (`round_std`: flow_grpo's and DiffusionNFT's default) or
    by its group's (`group_std`: GRPO as first written), + 1e-4 as they do. A group of one gets 0."""
    if std not in GROUP_STD:
        raise ValueError(f"std must be one of {GROUP_STD}, got {std!r}")
    values = rewards.detach().double().cpu()
    advantages = torch.empty_like(values)
    round_std = values.std(unbiased=False)
    for key in dict.fromkeys(groups):
        rows = torch.tensor([g == key for g in groups])
        group = values[rows]
        scale = group.std(unbiased=False) if std == "group_std" else round_std
        advantages[rows] = (group - group.mean()) / (scale + 1e-4)
    return advantages.to(rewards.device, torch.float32)


class PerPromptStatTracker:
    """Normalise each prompt's rewards by a bounded history of that prompt's rewards.

    A prompt with fewer than `min_count` remembered rewards falls back to the whole batch's
    mean/std (population std + 1e-6, as DDPO). The history is training state: see state_dict().
    """

    def __init__(self, buffer_size: int = 16, min_count: int = 16):
        if buffer_size < 1 or min_count < 1:
            raise ValueError("stat tracker buffer_size and min_count must be >= 1")
        self.buffer_size, self.min_count = buffer_size, min_count
        self.history: dict[str, deque[float]] = {}

    def update(self, prompts: list[str], rewards: torch.Tensor) -> torch.Tensor:
        values = rewards.detach().double().cpu()
        batch_mean, batch_std = values.mean(), values.std(unbiased=False) + EPS
        advantages = torch.empty_like(values)
        for prompt in dict.fromkeys(prompts):
            rows = torch.tensor([p == prompt for p in prompts])
            memory = self.history.setdefault(prompt, deque(maxlen=self.buffer_size))
            memory.extend(values[rows].tolist())
            if len(memory) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                seen = torch.tensor(list(memory), dtype=torch.float64)
                mean, std = seen.mean(), seen.std(unbiased=False) + EPS
            advantages[rows] = (values[rows] - mean) / std
        return advantages.to(rewards.device, torch.float32)

    def state_dict(self) -> dict:
        return {"buffer_size": self.buffer_size, "min_count": self.min_count,
                "history": {p: list(v) for p, v in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.buffer_size, self.min_count = state["buffer_size"], state["min_count"]
        self.history = {p: deque(v, maxlen=self.buffer_size) for p, v in state["history"].items()}
