"""The one generation path — sample a batch of prompts, decode the final latents, score the images — that
training rollouts, held-out evaluation, AsynDM's comparison and the reward benchmark all draw through, so a
sampler or a model keeps one contract with all of them."""

from __future__ import annotations

import torch

from alignlab.samplers.ddim import Trajectory


def sample_prompts(model, sampler, prompts: list[str], negative: torch.Tensor, generator, items=None,
                   embeds: torch.Tensor | None = None, **options) -> Trajectory:
    """One row per prompt from fresh noise drawn from `generator` (one generator, or one per row); the prompts'
    items (an ItemBatch) reach a sampler that needs them; `embeds`: the prompts' embeddings where the caller
    samples one batch several times (AsynDM's variants); `options` are the sampler's own (AsynDM's variant)."""
    extra = {"items": items} if sampler.needs_items else {}
    embeds = model.encode_prompts(prompts) if embeds is None else embeds
    return sampler.sample(model.unet, model.scheduler, embeds, negative, model.latent_shape(len(prompts)), generator,
                          **extra, **options)


def decode_and_score(model, reward, traj: Trajectory, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(images in [0, 1], float32 rewards) of a trajectory's final latents."""
    images = model.decode(traj.final)
    return images, torch.as_tensor(reward(images, prompts)).float()
