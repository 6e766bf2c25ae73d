"""A weighted sum of rewards, keeping each component's last values for logging."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from alignlab.errors import ConfigError
from alignlab.rewards.chunked import preload


class MultiReward:
    """sum_k weights[k] * components[k](images, prompts); `last_components` holds the last call's
    per-component rewards (name -> (B,) tensor) so a method or logger can report them."""

    name = "multi"

    def __init__(self, components: Mapping[str, object], weights: Mapping[str, float]):
        components, weights = dict(components), {key: float(value) for key, value in dict(weights).items()}
        if not components:
            raise ConfigError("reward.components is empty; give at least one reward.")
        if set(weights) != set(components):
            raise ConfigError(
                f"reward.weights has keys {sorted(weights)} but reward.components has {sorted(components)}; "
                "give exactly one weight per component."
            )
        for key, reward in components.items():
            if not callable(reward):
                raise ConfigError(f"reward.components.{key} is not a reward (got {type(reward).__name__}).")
        self.components = components
        self.weights = weights
        self.last_components: dict[str, torch.Tensor] = {}

    def load(self, device: torch.device) -> None:
        for reward in self.components.values():
            preload(reward, device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        values = {key: reward(images, prompts).float() for key, reward in self.components.items()}
        self.last_components = values
        total = torch.zeros(len(images), dtype=torch.float32, device=images.device)
        for key, value in values.items():
            total = total + self.weights[key] * value.to(images.device)
        return total
