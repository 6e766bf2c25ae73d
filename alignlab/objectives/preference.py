"""What both preference objectives share: their statistics and how a method records them."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DPOStats:
    loss: torch.Tensor
    accuracy: torch.Tensor  # fraction of pairs whose implicit reward prefers the winner
    margin: torch.Tensor  # mean implicit reward margin (winner - loser)


def record(method, stats: DPOStats) -> None:
    method.stats["loss"].append(stats.loss.item())
    method.stats["dpo_accuracy"].append(stats.accuracy.item())
    method.stats["dpo_margin"].append(stats.margin.item())
