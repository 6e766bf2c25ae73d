"""Shared-prefix branch sampling (B²-DiffuRL): denoise a prefix once, then continue it in K branches.

Works with any sampler that has DDIMSampler's `num_steps` and `denoise(unet, scheduler, latents,
prompt_embeds, negative_embeds, generator, start, end)`; a sampler with per-row state (AsynSampler's
timestep maps and masks, `needs_items`) has it copied into the branches with the latents.
"""

from __future__ import annotations

import torch

from alignlab.samplers.ddim import Trajectory, draw_noise


@torch.no_grad()
def branch_sample(
    sampler,
    unet,
    scheduler,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    latent_shape: tuple[int, ...],
    generator: torch.Generator,  # one generator: the branches draw from it after the prefix
    split_step: int,
    num_branches: int,
    chunk: int | None = None,
    items=None,
) -> tuple[Trajectory, torch.Tensor]:
    """B prompts -> B·K trajectories over all N steps, and the family (prefix) id of each row.

    Steps [0, N − split_step) run once per prompt; each state is then copied into K branches that draw
    independent noise for the last `split_step` steps. All B·K branch rows go through ONE UNet call per
    step (or `chunk` rows at a time, to bound memory; the chunk size changes which noise numbers a branch
    draws, not their distribution). Cost: B·(N − split_step) + K·B·split_step rows in N calls, not K·N.

    Rows are family-major (row r continues prefix r // K): siblings are consecutive and share every
    latent, log-prob and timestep before the branch point.
    """
    branch_at = sampler.num_steps - split_step
    latents = draw_noise(latent_shape, generator, prompt_embeds.device) * scheduler.init_noise_sigma
    state = None
    if sampler.needs_items:
        state = sampler.initial_state(unet, scheduler, latents, prompt_embeds, negative_embeds, generator, items,
                                      "asyndm")

    def with_state(rows) -> dict:
        return {} if state is None else {"state": state.index(rows)}

    prefix = sampler.denoise(unet, scheduler, latents, prompt_embeds, negative_embeds, generator, 0, branch_at,
                             **({} if state is None else {"state": state}))
    family = torch.arange(latent_shape[0], device=prompt_embeds.device).repeat_interleave(num_branches)
    prefix = prefix.index(family)
    step = chunk or len(family)
    tails = [
        sampler.denoise(unet, scheduler, prefix.final[first : first + step],
                        prefix.prompt_embeds[first : first + step], negative_embeds, generator, branch_at,
                        **with_state(family[first : first + step]))
        for first in range(0, len(family), step)
    ]
    return _join(prefix, Trajectory.cat(tails)), family


def _join(head: Trajectory, tail: Trajectory) -> Trajectory:
    """`head` (steps [0, j)) followed by `tail` (steps [j, N), starting from head's last state)."""
    return Trajectory(
        latents=torch.cat([head.latents[:, :-1], tail.latents], dim=1),
        timesteps=torch.cat([head.timesteps, tail.timesteps], dim=1),
        prev_timesteps=torch.cat([head.prev_timesteps, tail.prev_timesteps], dim=1),
        log_probs=torch.cat([head.log_probs, tail.log_probs], dim=1),
        prompt_embeds=tail.prompt_embeds,
    )
