"""The DDIM step with the log-probability of the step it took (DDPO's core, see docs/design.md).

Timesteps may be scalars, one per sample (B,) or one per latent pixel (B, h, w): the same code
serves the synchronous sampler, per-sample shuffled training timesteps and AsynDM's per-pixel maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class StepResult:
    prev_sample: torch.Tensor
    log_prob: torch.Tensor  # (B,)
    mean: torch.Tensor
    std: torch.Tensor


def broadcast_timestep(t: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """Shape a scalar, (B,) or (B, h, w) tensor so that it broadcasts against (B, C, h, w)."""
    if t.ndim == 0:
        return t
    if t.ndim == 1:
        return t.view(-1, *([1] * (sample.ndim - 1)))
    if t.ndim == sample.ndim - 1:
        return t.unsqueeze(1)
    raise ValueError(f"timestep of shape {tuple(t.shape)} does not fit a sample of shape {tuple(sample.shape)}")


def alphas_at(alphas_cumprod: torch.Tensor, timestep: torch.Tensor, final_alpha_cumprod: float) -> torch.Tensor:
    """ā at integer timesteps; negative timesteps (past the end) give the scheduler's final ā."""
    index = timestep.long()
    alphas = alphas_cumprod.to(index.device)[index.clamp(min=0)]
    return torch.where(index >= 0, alphas, torch.as_tensor(final_alpha_cumprod, dtype=alphas.dtype))


def x0_and_eps(scheduler, model_output: torch.Tensor, alpha_t: torch.Tensor, x_t: torch.Tensor):
    """(x̂0, ε̂) a model output implies at x_t = √ā x0 + √(1−ā) ε, for the scheduler's prediction type
    (ε- or v-prediction); `alpha_t` is ā, shaped to broadcast against x_t."""
    beta_t = 1 - alpha_t
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (x_t - beta_t.sqrt() * model_output) / alpha_t.sqrt(), model_output
    if kind == "v_prediction":
        return (alpha_t.sqrt() * x_t - beta_t.sqrt() * model_output,
                alpha_t.sqrt() * model_output + beta_t.sqrt() * x_t)
    raise ValueError(f"prediction_type {kind!r} is not supported (epsilon or v_prediction)")


def ddim_step(
    scheduler,
    model_output: torch.Tensor,
    timestep: torch.Tensor | int,
    prev_timestep: torch.Tensor | int,
    sample: torch.Tensor,
    eta: float = 1.0,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> StepResult:
    """One DDIM step x_t -> x_t' and log p(x_t' | x_t), the mean over C, H, W of the Gaussian density.

    The mean (not the sum) keeps ratios of 16k-dimensional densities in a sane range (as DDPO does).
    With `prev_sample` the step is re-scored instead of sampled; `noise` fixes z for replays.
    """
    if eta <= 0:
        raise ValueError("eta must be > 0: a deterministic DDIM step (sigma = 0) has no log-probability")
    device = sample.device
    t = torch.as_tensor(timestep, device=device)
    t_prev = torch.as_tensor(prev_timestep, device=device)
    final = float(scheduler.final_alpha_cumprod)
    alpha_t = broadcast_timestep(alphas_at(scheduler.alphas_cumprod, t, final), sample).to(torch.float32)
    alpha_p = broadcast_timestep(alphas_at(scheduler.alphas_cumprod, t_prev, final), sample).to(torch.float32)
    beta_t = 1 - alpha_t

    x_t = sample.float()
    x0, eps = x0_and_eps(scheduler, model_output.float(), alpha_t, x_t)
    if scheduler.config.clip_sample:
        limit = scheduler.config.clip_sample_range
        x0 = x0.clamp(-limit, limit)

    variance = (1 - alpha_p) / beta_t * (1 - alpha_t / alpha_p)
    std = eta * variance.clamp(min=0).sqrt()
    if not bool((std > 0).all()):
        raise ValueError(
            "the DDIM step has sigma = 0 (next timestep has alpha_cumprod = 1?), so its log-probability is "
            "undefined; use a scheduler with set_alpha_to_one=False"
        )
    mean = alpha_p.sqrt() * x0 + (1 - alpha_p - std**2).clamp(min=0).sqrt() * eps
    if prev_sample is None:
        if noise is None:
            noise = torch.randn(sample.shape, generator=generator, device=device, dtype=torch.float32)
        prev_sample = mean + std * noise
    x_prev = prev_sample.float()
    log_density = -((x_prev.detach() - mean) ** 2) / (2 * std**2) - std.log() - _LOG_SQRT_2PI
    log_prob = log_density.mean(dim=tuple(range(1, sample.ndim)))
    return StepResult(prev_sample=x_prev.to(sample.dtype), log_prob=log_prob, mean=mean, std=std)
