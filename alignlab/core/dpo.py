"""Preference losses: trajectory DPO on denoising steps, and Diffusion-DPO on final images."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DPOStats:
    loss: torch.Tensor
    accuracy: torch.Tensor  # fraction of pairs whose implicit reward prefers the winner
    margin: torch.Tensor  # mean implicit reward margin (winner - loser)


def trajectory_dpo_loss(
    logp_win: torch.Tensor,
    ref_logp_win: torch.Tensor,
    logp_lose: torch.Tensor,
    ref_logp_lose: torch.Tensor,
    beta: float = 0.1,
    clip_eps: float | None = 0.1,
) -> DPOStats:
    """−log σ(β·[log π/π_ref (winner step)] − β·[log π/π_ref (loser step)]) per pair, averaged.

    Each side's log-ratio is clipped to [log(1−ε), log(1+ε)] (D3PO-style trust region, as D-Fusion
    trains); ε = None disables the clip. Identical policy and reference give log 2.
    """
    ratio_win = logp_win - ref_logp_win
    ratio_lose = logp_lose - ref_logp_lose
    if clip_eps is not None:
        low, high = math.log(1 - clip_eps), math.log(1 + clip_eps)
        ratio_win, ratio_lose = ratio_win.clamp(low, high), ratio_lose.clamp(low, high)
    margin = beta * (ratio_win - ratio_lose)
    return DPOStats(-F.logsigmoid(margin).mean(), (margin > 0).float().mean().detach(),
                    margin.mean().detach())


def diffusion_dpo_loss(
    model_err_win: torch.Tensor,
    model_err_lose: torch.Tensor,
    ref_err_win: torch.Tensor,
    ref_err_lose: torch.Tensor,
    beta: float = 2500.0,
) -> DPOStats:
    """Diffusion-DPO (Wallace et al. 2023): errors are per-sample MSEs of the noise prediction at a
    shared random t and noise; the loss rewards lowering the winner's error relative to the
    reference more than the loser's: −log σ(−β/2 · [(e_w − e_w^ref) − (e_l − e_l^ref)])."""
    inside = -0.5 * beta * ((model_err_win - ref_err_win) - (model_err_lose - ref_err_lose))
    return DPOStats(-F.logsigmoid(inside).mean(), (inside > 0).float().mean().detach(),
                    inside.mean().detach())
