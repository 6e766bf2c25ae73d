"""Trajectory DPO: DPO per denoising step of a preference pair against the frozen reference, each side's
log-ratio clipped to log(1 ± ε) — D-Fusion's reading of DPO for diffusion trajectories (docs/dfusion.md)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from alignlab.models import frozen_reference
from alignlab.objectives.preference import DPOStats, record


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


class TrajectoryDPO:
    """Trains micro-batches {"rows": indices into buffer["winners"] / ["losers"], "steps": (pairs, n) step
    indices}; `prepare` scores every stored step under the frozen reference once per round."""

    trains_on, renoise, needs_reference = "pairs", None, True
    group_advantages = None

    def __init__(self, beta: float = 0.1, clip_eps: float | None = 0.1):
        self.beta, self.clip_eps = beta, clip_eps

    def prepare(self, method) -> None:
        """log π_ref of every stored step under the frozen model, once per round."""
        if len(method.buffer["winners"]):
            with frozen_reference(method.model):
                method.buffer["ref_log_probs"] = method.step_log_probs(method.buffer["traj"], method.sample_batch_size)

    def backward_passes(self, method) -> int:
        return method.train_timesteps

    def train(self, method, batch: dict) -> None:
        buffer, steps = method.buffer, batch["steps"]
        win, lose = buffer["winners"][batch["rows"]], buffer["losers"][batch["rows"]]
        rows = torch.cat([win, lose])
        traj, ref = buffer["traj"].index(rows), buffer["ref_log_probs"][rows]
        scale = 1.0 / (method.grad_accum * steps.shape[1])
        half = len(win)
        for column in steps.T:
            both = torch.cat([column, column])
            log_prob = method.sampler.step_log_prob(method.model.unet, method.model.scheduler, traj, both,
                                                    buffer["negative"], method.train_guidance)
            ref_lp = ref[torch.arange(len(rows), device=both.device), both]
            stats = trajectory_dpo_loss(log_prob[:half], ref_lp[:half], log_prob[half:], ref_lp[half:],
                                        self.beta, self.clip_eps)
            method.manual_backward(stats.loss * scale)
            record(method, stats)
