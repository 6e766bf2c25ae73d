"""PPO-clip on one denoising step (DDPO's loss) and its diagnostics."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PPOStats:
    loss: torch.Tensor
    approx_kl: torch.Tensor
    clipfrac: torch.Tensor


def ppo_clip_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float,
    adv_clip_max: float,
) -> PPOStats:
    """mean(max(−A·r, −A·clip(r, 1−ε, 1+ε))) with r = exp(logp − logp_old) and A clipped to ±adv_clip_max."""
    advantages = advantages.clamp(-adv_clip_max, adv_clip_max)
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    with torch.no_grad():
        approx_kl = 0.5 * ((log_prob - old_log_prob) ** 2).mean()
        clipfrac = ((ratio - 1.0).abs() > clip_range).float().mean()
    return PPOStats(torch.maximum(unclipped, clipped).mean(), approx_kl, clipfrac)
