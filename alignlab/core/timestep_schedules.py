"""AsynDM's timestep schedules: where each pixel's timestep goes next (docs/asyndm.md).

A schedule maps the float timestep state `s` (any shape) and the number of steps still to take
after this one, `r`, to the next state. Background pixels follow `linear` (the DDIM grid); prompt-
related pixels follow a concave curve (bin, lin or exp) that keeps them noisier for longer, the more
so the larger their curvature k in (0, 1). Every schedule reaches 0 at r = 0 and is clamped to
[0, T - 1] (large k would otherwise index past the end of alphas_cumprod).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from alignlab.errors import ConfigError


@dataclass(frozen=True)
class Grid:
    """T train timesteps, N inference steps, τ = the scheduler's steps_offset."""

    num_train_timesteps: int = 1000
    num_steps: int = 50
    offset: int = 1

    @property
    def start(self) -> float:
        """The state before the first update: T + τ everywhere."""
        return float(self.num_train_timesteps + self.offset)


def check_k(k: float) -> float:
    if not 0 < k < 1:
        raise ConfigError(f"AsynDM's curvature k must be in (0, 1), got {k}")
    return k


def _clamp(next_state: torch.Tensor, grid: Grid) -> torch.Tensor:
    return next_state.clamp(0, grid.num_train_timesteps - 1)


def linear(s: torch.Tensor, r: int, grid: Grid) -> torch.Tensor:
    """s' = s − (s − τ)/r: from T + τ this is the DDIM "leading" grid (981, 961, …, 1 for N = 50)."""
    if r == 0:
        return torch.zeros_like(s)
    return _clamp(s - (s - grid.offset) / r, grid)


def bin_curve(s: torch.Tensor, r: int, k: float, grid: Grid) -> torch.Tensor:
    """Quadratic: s' = s − (s − τ)/r + k·(T/N²)·(r − 1). The curvature is fixed, so re-fitting from
    the current state keeps a pixel on its parabola and a pixel whose mask changes continues smoothly."""
    bend = check_k(k) * grid.num_train_timesteps / grid.num_steps**2 * (r - 1)
    if r == 0:
        return torch.zeros_like(s)
    return _clamp(s - (s - grid.offset) / r + bend, grid)


def lin_curve(s: torch.Tensor, r: int, k: float, grid: Grid) -> torch.Tensor:
    """Piecewise linear: s' = min(s − (1−k)·T/N, τ + (1+k)·(T/N)·(r − 1))."""
    slope, k = grid.num_train_timesteps / grid.num_steps, check_k(k)
    if r == 0:
        return torch.zeros_like(s)
    return _clamp((s - (1 - k) * slope).clamp(max=grid.offset + (1 + k) * slope * (r - 1)), grid)


def exp_curve(s: torch.Tensor, r: int, k: float, grid: Grid) -> torch.Tensor:
    """y = a·e^{x/N} + b·x + c with a = −kT/(e−1), b = −(1−k)T/N, re-fitted through the current state:
    s' = s + b + a(e^{1/N} − 1)·(s − τ + b·r) / (a(1 − e^{r/N}))."""
    T, N, k = grid.num_train_timesteps, grid.num_steps, check_k(k)
    if r == 0:
        return torch.zeros_like(s)
    a, b = -k * T / (math.e - 1), -(1 - k) * T / N
    fitted = (s - grid.offset + b * r) / (a * (1 - math.exp(r / N)))
    return _clamp(s + b + a * (math.exp(1 / N) - 1) * fitted, grid)


CURVES = {"bin": bin_curve, "lin": lin_curve, "exp": exp_curve}


def next_state(s: torch.Tensor, r: int, k_map: torch.Tensor, curve: str, grid: Grid) -> torch.Tensor:
    """s' = bg · linear(s, r) + Σ_j mask_j · curve(s, r, k_j), with the masks given as a per-pixel k
    (0 = background). Each distinct k is one item's curve."""
    out = linear(s, r, grid)
    for k in torch.unique(k_map[k_map > 0]).tolist():
        out = torch.where(k_map == k, CURVES[curve](s, r, k, grid), out)
    return out


def check_decreasing(t: torch.Tensor, t_next: torch.Tensor, step: int) -> None:
    """Every pixel's (rounded) timestep must drop at every step: σ² < 0 or σ = 0 would give NaN."""
    stuck = t_next >= t
    if bool(stuck.any()):
        before, after = t[stuck][0].item(), t_next[stuck][0].item()
        raise ConfigError(
            f"AsynDM timesteps must strictly decrease, but at step {step} {int(stuck.sum())} pixels go from "
            f"{before} to {after}: lower the curvature k or use more sampler.num_steps"
        )
