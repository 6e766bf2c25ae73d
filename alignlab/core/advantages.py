"""Advantages from rewards: DDPO's per-prompt statistics tracker and the plain batch z-score."""

from __future__ import annotations

from collections import deque

import torch

EPS = 1e-6


def batch_zscore(rewards: torch.Tensor) -> torch.Tensor:
    return (rewards - rewards.mean()) / (rewards.std(unbiased=False) + EPS)


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
