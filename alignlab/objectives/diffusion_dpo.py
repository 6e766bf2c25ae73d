"""Diffusion-DPO (Wallace et al. 2023): preference pairs' final latents re-noised at a shared random t; the
model's denoising error against the frozen reference's decides the loss — no trajectories needed."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignlab.models import frozen_reference
from alignlab.objectives.preference import DPOStats, record
from alignlab.samplers.ddim import guided_noise


def diffusion_dpo_loss(
    model_err_win: torch.Tensor,
    model_err_lose: torch.Tensor,
    ref_err_win: torch.Tensor,
    ref_err_lose: torch.Tensor,
    beta: float = 2500.0,
) -> DPOStats:
    """Errors are per-sample MSEs of the noise prediction at a shared random t and noise; the loss rewards
    lowering the winner's error relative to the reference more than the loser's:
    −log σ(−β/2 · [(e_w − e_w^ref) − (e_l − e_l^ref)])."""
    inside = -0.5 * beta * ((model_err_win - ref_err_win) - (model_err_lose - ref_err_lose))
    return DPOStats(-F.logsigmoid(inside).mean(), (inside > 0).float().mean().detach(),
                    inside.mean().detach())


class DiffusionDPO:
    """Trains micro-batches {"rows": indices into buffer["winners"] / ["losers"], "t": (pairs,) timesteps,
    "noise": (pairs, *latent) noise} with one backward pass each."""

    trains_on, renoise, needs_reference = "pairs", "random_t", True
    group_advantages = None

    def __init__(self, beta_dpo: float = 2500.0):
        self.beta_dpo = beta_dpo

    def prepare(self, method) -> None:
        pass

    def backward_passes(self, method) -> int:
        return 1

    def train(self, method, batch: dict) -> None:
        model, buffer = method.model, method.buffer
        rows = torch.cat([buffer["winners"][batch["rows"]], buffer["losers"][batch["rows"]]])
        traj = buffer["traj"]
        x0 = traj.final[rows]
        t2, noise2 = torch.cat([batch["t"], batch["t"]]), torch.cat([batch["noise"], batch["noise"]])
        noisy = model.scheduler.add_noise(x0, noise2, t2)
        target = noise2 if model.scheduler.config.prediction_type == "epsilon" \
            else model.scheduler.get_velocity(x0, noise2, t2)
        embeds = traj.prompt_embeds[rows]

        def errors():
            pred = guided_noise(model.unet, noisy, t2, embeds, buffer["negative"], 1.0)
            return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))

        model_err = errors()
        with torch.no_grad(), frozen_reference(model):
            ref_err = errors()
        half = len(rows) // 2
        stats = diffusion_dpo_loss(model_err[:half], model_err[half:], ref_err[:half], ref_err[half:],
                                   self.beta_dpo)
        method.manual_backward(stats.loss / method.grad_accum)
        record(method, stats)
