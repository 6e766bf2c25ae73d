"""PPO-clip over denoising steps (DDPO, Black et al. 2023): each stored step's log-probability under the current
policy against the one it was sampled with, the ratio clipped to 1 ± ε (docs/design.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.errors import require_positive


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


class PPOClip:
    """Trains micro-batches {"rows": sample rows, "steps": (rows, n) step indices} on `buffer["advantages"]`.
    `advantage_limit` clips the advantages in the loss (DDPO: adv_clip_max; B²-DiffuRL clips its z-scores
    before weighting them and passes inf)."""

    trains_on, renoised, needs_reference = "advantages", False, False

    def __init__(self, clip_range: float = 1e-4, advantage_limit: float = 5.0):
        require_positive("method", clip_range=clip_range, adv_clip_max=advantage_limit)
        self.clip_range, self.advantage_limit = clip_range, advantage_limit

    def prepare(self, method) -> None:
        pass

    def backward_passes(self, method) -> int:
        return method.train_timesteps

    def train(self, method, batch: dict) -> None:
        traj = method.buffer["traj"].index(batch["rows"])
        advantages = method.buffer["advantages"][batch["rows"]]
        scale = 1.0 / (method.grad_accum * batch["steps"].shape[1])
        for column in batch["steps"].T:
            log_prob = method.sampler.step_log_prob(method.model.unet, method.model.scheduler, traj, column,
                                                    method.buffer["negative"], method.train_guidance)
            rows = torch.arange(len(column), device=column.device)
            stats = ppo_clip_loss(log_prob, traj.log_probs[rows, column], advantages, self.clip_range,
                                  self.advantage_limit)
            method.manual_backward(stats.loss * scale)
            for key in ("loss", "approx_kl", "clipfrac"):
                method.stats[key].append(getattr(stats, key).item())
