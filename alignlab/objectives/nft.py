"""DiffusionNFT (Zheng et al. 2025, NVlabs): reinforcement on the forward process. A final sample is re-noised
at the sampling grid's timesteps and the model is trained by denoising it, with the reward deciding in which
direction: an implicit positive policy (the sampling policy moved towards the current one) should reconstruct
good samples, an implicit negative policy (moved away) bad ones. No likelihoods, so any sampler's samples
train it (docs/objectives.md)."""

from __future__ import annotations

import torch

from alignlab.core.advantages import GROUP_STD
from alignlab.core.ddim import broadcast_timestep, alphas_at, x0_and_eps
from alignlab.errors import ConfigError, require_positive
from alignlab.models import frozen_reference, trainable_parameters, weights_held
from alignlab.samplers.ddim import guided_noise


def optimality(advantages: torch.Tensor, advantage_limit: float) -> torch.Tensor:
    """r ∈ [0, 1], the probability that a sample is good: the advantage clipped to ±limit, mapped linearly
    (−limit → 0, 0 → ½, +limit → 1)."""
    clipped = advantages.clamp(-advantage_limit, advantage_limit)
    return (clipped / advantage_limit / 2 + 0.5).clamp(0, 1)


def implicit_policies(prediction: torch.Tensor, old_prediction: torch.Tensor, beta: float):
    """(positive, negative): the sampling policy's prediction moved by β towards the current one, and by β away
    from it — v⁺ = β·v_θ + (1−β)·v_old, v⁻ = (1+β)·v_old − β·v_θ. At θ = old both are the old prediction."""
    return beta * prediction + (1 - beta) * old_prediction, (1 + beta) * old_prediction - beta * prediction


def adaptive_error(x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """‖x̂0 − x0‖² per sample (mean over dimensions) divided by its own mean absolute error (held constant, at
    least 1e-5): every sample's loss has the same scale whatever its timestep."""
    dims = tuple(range(1, x0.ndim))
    with torch.no_grad():
        weight = (x0_hat - x0).abs().mean(dim=dims, keepdim=True).clamp(min=1e-5)
    return ((x0_hat - x0) ** 2 / weight).mean(dim=dims)


def nft_loss(x0_positive: torch.Tensor, x0_negative: torch.Tensor, x0: torch.Tensor, r: torch.Tensor,
             beta: float, advantage_limit: float) -> torch.Tensor:
    """mean(r·E(x̂0⁺) + (1 − r)·E(x̂0⁻)) · limit / β with E the adaptive error: good samples (r → 1) pull the
    positive policy onto them, bad ones (r → 0) the negative policy (and so the current one away from them)."""
    per_sample = r * adaptive_error(x0_positive, x0) + (1 - r) * adaptive_error(x0_negative, x0)
    return (per_sample / beta * advantage_limit).mean()


class DiffusionNFT:
    """Trains micro-batches {"rows": sample rows, "steps": (rows, n) step indices, "noise": (rows, n, *latent)}
    on `buffer["advantages"]` (group-normalised: the official per-prompt mean over the round's std): each row's
    final latent is re-noised at the sampler's timestep of each trained step. The old policy is the round's
    sampling policy (its weights are held from the round's start: the official code's decay 0); `kl_weight` adds
    that multiple of ‖v_θ − v_ref‖² to the frozen pre-trained model. Defaults: the official GenEval setting
    (β = 1, advantages clipped at 5, KL weight 1e-4)."""

    trains_on, renoise = "advantages", "trained_steps"

    def __init__(self, beta: float = 1.0, advantage_limit: float = 5.0, kl_weight: float = 1e-4,
                 std: str = "round_std"):
        require_positive("method.objective", beta=beta, advantage_limit=advantage_limit)
        if kl_weight < 0:
            raise ConfigError(f"method.objective.kl_weight must be >= 0, got {kl_weight}")
        if std not in GROUP_STD:
            raise ConfigError(f"method.objective.std must be one of {', '.join(GROUP_STD)}, got {std!r}")
        self.beta, self.advantage_limit, self.kl_weight = beta, advantage_limit, kl_weight
        self.needs_reference, self.group_advantages = kl_weight > 0, std

    def prepare(self, method) -> None:
        """Hold the sampling policy's weights: every micro-batch of the round compares with it."""
        method.buffer["old_weights"] = [p.detach().clone() for p in trainable_parameters(method.model)]

    def backward_passes(self, method) -> int:
        return method.train_timesteps

    def train(self, method, batch: dict) -> None:
        model, buffer = method.model, method.buffer
        traj = buffer["traj"].index(batch["rows"])
        x0 = traj.final.float()
        r = optimality(buffer["advantages"][batch["rows"]], self.advantage_limit)
        grid, _ = method.sampler.step_grid(model.scheduler)
        final = float(model.scheduler.final_alpha_cumprod)
        scale = 1.0 / (method.grad_accum * batch["steps"].shape[1])

        for j, column in enumerate(batch["steps"].T):
            t = grid.to(column.device)[column]
            x_t = model.scheduler.add_noise(x0, batch["noise"][:, j].to(x0.device), t)
            alpha_t = broadcast_timestep(alphas_at(model.scheduler.alphas_cumprod, t, final), x0).float()

            def predict(x_t=x_t, t=t):
                return guided_noise(model.unet, x_t, t, traj.prompt_embeds, buffer["negative"],
                                    method.train_guidance).float()

            with torch.no_grad(), weights_held(model, buffer["old_weights"]):  # before the graph: it swaps weights
                old = predict()
            prediction = predict()
            positive, negative = implicit_policies(prediction, old, self.beta)
            loss = nft_loss(x0_and_eps(model.scheduler, positive, alpha_t, x_t)[0],
                            x0_and_eps(model.scheduler, negative, alpha_t, x_t)[0], x0, r, self.beta,
                            self.advantage_limit)
            method.stats["nft_loss"].append(loss.item())
            if self.kl_weight > 0:
                with torch.no_grad(), frozen_reference(model):
                    reference = predict()
                kl = ((prediction - reference) ** 2).mean()
                loss = loss + self.kl_weight * kl
                method.stats["kl_reference"].append(kl.item())
            method.manual_backward(loss * scale)
            method.stats["old_deviation"].append(((prediction - old) ** 2).mean().item())
