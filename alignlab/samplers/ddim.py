"""Rollouts: classifier-free-guided DDIM sampling that records the trajectory needed for RL.

`denoise` runs any window [start, end) of the step grid from a given state, so a shared prefix can
be denoised once and continued in several branches (B²-DiffuRL), and `step_log_prob` re-scores
stored steps with the current weights (the policy-gradient and DPO losses).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from tqdm.auto import tqdm

from alignlab.core.ddim import StepResult, ddim_step
from alignlab.errors import ConfigError, require_at_least_one


@dataclass
class Trajectory:
    """One batch of denoising chains. Step j goes from latents[:, j] to latents[:, j + 1]."""

    latents: torch.Tensor  # (B, n + 1, C, h, w)
    timesteps: torch.Tensor  # (B, n) or per-pixel (B, n, h, w)
    prev_timesteps: torch.Tensor  # same shape as timesteps
    log_probs: torch.Tensor  # (B, n)
    prompt_embeds: torch.Tensor  # (B, L, D)

    @property
    def final(self) -> torch.Tensor:
        return self.latents[:, -1]

    def index(self, rows: torch.Tensor | slice) -> "Trajectory":
        return Trajectory(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @staticmethod
    def cat(parts: list["Trajectory"]) -> "Trajectory":
        return Trajectory(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Trajectory)})


def draw_noise(shape, generator: torch.Generator | list[torch.Generator], device) -> torch.Tensor:
    """Standard normal noise from one CPU generator, or one generator per row (so any row's initial and
    per-step noise can be replayed on its own, as D-Fusion's targets replay their base's)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        noise = torch.stack([torch.randn(shape[1:], generator=g, dtype=torch.float32) for g in generator])
    else:
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    return noise.to(device)


def guided_noise(unet, latents, timestep, prompt_embeds, negative_embeds, guidance_scale: float):
    """ε̂ = ε_u + w (ε_c − ε_u) with ONE batched UNet call on [uncond; cond] (the three papers' CFG)."""
    timestep = torch.as_tensor(timestep, device=latents.device)
    if guidance_scale == 1.0:
        return unet(latents, timestep, encoder_hidden_states=prompt_embeds).sample
    batch = latents.shape[0]
    negative = negative_embeds.expand(batch, *negative_embeds.shape[-2:])
    doubled_t = timestep if timestep.ndim == 0 else torch.cat([timestep, timestep])
    out = unet(
        torch.cat([latents, latents]), doubled_t, encoder_hidden_states=torch.cat([negative, prompt_embeds])
    ).sample
    uncond, cond = out.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


class DDIMSampler:
    """Synchronous DDIM sampler (every pixel on the scheduler's timestep grid)."""

    needs_items = False  # the prompts' item words are not needed (AsynSampler's are)

    def __init__(self, num_steps: int = 20, guidance_scale: float = 5.0, eta: float = 1.0, progress: bool = True):
        require_at_least_one("sampler", num_steps=num_steps)
        if eta <= 0:
            raise ConfigError(f"sampler.eta must be > 0 for log-probabilities, got {eta}")
        self.num_steps = num_steps
        self.guidance_scale = guidance_scale
        self.eta = eta
        self.progress = progress

    def step_grid(self, scheduler) -> tuple[torch.Tensor, torch.Tensor]:
        """(t_j, t'_j) for j = 0..n-1 on the scheduler's grid, t' = t − T/n (negative past the end)."""
        scheduler.set_timesteps(self.num_steps)
        timesteps = scheduler.timesteps.clone().long()
        prev = timesteps - scheduler.config.num_train_timesteps // self.num_steps
        return timesteps, prev

    def denoise(
        self,
        unet,
        scheduler,
        latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        negative_embeds: torch.Tensor,
        generator: torch.Generator,
        start: int = 0,
        end: int | None = None,
    ) -> Trajectory:
        """Denoise steps [start, end) from `latents` (the state before step `start`)."""
        end = self.num_steps if end is None else end
        grid, prev_grid = self.step_grid(scheduler)
        batch, device = latents.shape[0], latents.device
        chain, logps = [latents], []
        for j in tqdm(range(start, end), desc="sampling", leave=False, disable=not self.progress):
            eps = guided_noise(unet, chain[-1], grid[j], prompt_embeds, negative_embeds, self.guidance_scale)
            noise = draw_noise(latents.shape, generator, device)
            result = ddim_step(scheduler, eps, grid[j], prev_grid[j], chain[-1], self.eta, noise=noise)
            chain.append(result.prev_sample)
            logps.append(result.log_prob)
        steps = grid[start:end].to(device).expand(batch, -1)
        return Trajectory(
            latents=torch.stack(chain, dim=1),
            timesteps=steps,
            prev_timesteps=prev_grid[start:end].to(device).expand(batch, -1),
            log_probs=torch.stack(logps, dim=1) if logps else latents.new_zeros(batch, 0),
            prompt_embeds=prompt_embeds,
        )

    @torch.no_grad()
    def sample(self, unet, scheduler, prompt_embeds, negative_embeds, latent_shape, generator) -> Trajectory:
        """A full rollout from fresh Gaussian noise, drawn from `generator` (on the CPU, so seeds match
        across devices and a diffusers pipeline given the same generator draws the same numbers)."""
        device = prompt_embeds.device
        latents = draw_noise(latent_shape, generator, device)
        latents = latents * scheduler.init_noise_sigma
        return self.denoise(unet, scheduler, latents, prompt_embeds, negative_embeds, generator)

    def rescore(
        self, unet, scheduler, traj: Trajectory, step: torch.Tensor, negative_embeds,
        guidance_scale: float | None = None,
    ) -> StepResult:
        """Stored step `step` (one index per sample) under the current weights: the step's Gaussian (mean, std)
        and log p(x_t' | x_t) of the stored x_t'; `guidance_scale` overrides the sampler's (1.0 = no CFG in the
        training forward). The policy-gradient losses read the log-probability, a KL to the reference the mean."""
        rows = torch.arange(traj.latents.shape[0], device=step.device)
        x_t, x_prev = traj.latents[rows, step], traj.latents[rows, step + 1]
        t, t_prev = traj.timesteps[rows, step], traj.prev_timesteps[rows, step]
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        eps = guided_noise(unet, x_t, t, traj.prompt_embeds, negative_embeds, scale)
        return ddim_step(scheduler, eps, t, t_prev, x_t, self.eta, prev_sample=x_prev)

    def step_log_prob(
        self, unet, scheduler, traj: Trajectory, step: torch.Tensor, negative_embeds,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """log p(x_t' | x_t) of stored step `step` under the current weights (see rescore)."""
        return self.rescore(unet, scheduler, traj, step, negative_embeds, guidance_scale).log_prob
