"""PPO-clip over denoising steps (DDPO, Black et al. 2023): each stored step's log-probability under the current
policy against the one it was sampled with, the ratio clipped to 1 ± ε (docs/design.md); optionally with a
per-step KL to the frozen pre-trained model, the regulariser GRPO and DPOK add (docs/objectives.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from alignlab.errors import ConfigError, require_positive
from alignlab.models import frozen_reference


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


def step_kl(mean: torch.Tensor, reference_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(μ_ref, σ²)) of one DDIM step per sample, in closed form: both Gaussians share the step's σ,
    so per dimension it is (μ − μ_ref)² / 2σ²; averaged over the latent's dimensions (B,), as the step's
    log-probability is (core/ddim.py)."""
    per_dimension = (mean.float() - reference_mean.float()) ** 2 / (2 * std.float() ** 2)
    return per_dimension.mean(dim=tuple(range(1, mean.ndim)))


class PPOClip:
    """Trains micro-batches {"rows": sample rows, "steps": (rows, n) step indices} on `buffer["advantages"]`.
    `advantage_limit` clips the advantages in the loss (DDPO: adv_clip_max; B²-DiffuRL clips its z-scores
    before weighting them and passes inf); `reward_weight` scales them after the clip (DPOK's α); `kl_weight` > 0
    adds that multiple of each trained step's KL to the frozen pre-trained model (step_kl)."""

    trains_on, renoise, needs_reference = "advantages", None, False
    group_advantages = None  # the round builder's own normalisation (DDPO: per-prompt statistics)

    def __init__(self, clip_range: float = 1e-4, advantage_limit: float = 5.0, kl_weight: float = 0.0,
                 reward_weight: float = 1.0):
        require_positive("method", clip_range=clip_range, adv_clip_max=advantage_limit)
        require_positive("method.objective", reward_weight=reward_weight)
        if kl_weight < 0:
            raise ConfigError(f"method.objective.kl_weight must be >= 0, got {kl_weight}")
        self.clip_range, self.advantage_limit = clip_range, advantage_limit
        self.kl_weight, self.reward_weight = kl_weight, reward_weight
        self.needs_reference = kl_weight > 0

    def prepare(self, method) -> None:
        pass

    def backward_passes(self, method) -> int:
        return method.train_timesteps

    def train(self, method, batch: dict) -> None:
        model, sampler = method.model, method.sampler
        traj = method.buffer["traj"].index(batch["rows"])
        limit = self.advantage_limit
        advantages = method.buffer["advantages"][batch["rows"]].clamp(-limit, limit) * self.reward_weight
        scale = 1.0 / (method.grad_accum * batch["steps"].shape[1])
        for column in batch["steps"].T:
            step = sampler.rescore(model.unet, model.scheduler, traj, column, method.buffer["negative"],
                                   method.train_guidance)
            rows = torch.arange(len(column), device=column.device)
            stats = ppo_clip_loss(step.log_prob, traj.log_probs[rows, column], advantages, self.clip_range, math.inf)
            loss = stats.loss
            if self.kl_weight > 0:
                with torch.no_grad(), frozen_reference(model):
                    reference = sampler.rescore(model.unet, model.scheduler, traj, column, method.buffer["negative"],
                                                method.train_guidance)
                kl = step_kl(step.mean, reference.mean, step.std).mean()
                loss = loss + self.kl_weight * kl
                method.stats["kl_reference"].append(kl.item())
            method.manual_backward(loss * scale)
            for key in ("loss", "approx_kl", "clipfrac"):
                method.stats[key].append(getattr(stats, key).item())
