"""D-Fusion's self-attention fusion: the target's self-attention reads keys and values blended from
the reference's under the reference's item mask (docs/dfusion.md).

Blending K and V is blending the OUTPUTS of the `to_k` / `to_v` projections, so it is done with
forward hooks on those modules: diffusers' own (SDPA) attention processor stays in charge of the
attention itself, and LoRA adapters inside the projections are included automatically.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from alignlab.core.attention import AttentionStore, CaptureProcessor, attention_processors
from alignlab.core.ddim import ddim_step
from alignlab.core.masks import absolute_masks, item_attention
from alignlab.samplers.ddim import Trajectory, draw_noise, guided_noise


def self_attention_layers(unet, blocks: tuple[str, ...] = ("mid_block", "up_blocks")) -> dict[str, torch.nn.Module]:
    """The self-attention modules (`attn1`) of the given UNet blocks, by name (paper: mid + all up)."""
    return {name: module for name, module in unet.named_modules()
            if name.endswith("attn1") and name.split(".")[0] in blocks}


class KVFusion:
    """Record a reference pass's K/V, then blend them into a target pass: K* = m·K_ref + (1−m)·K.

    `mask` is (B, h, w) in [0, 1] at any resolution; it is nearest-resized to each layer's token grid
    and applied along key positions, identically for both CFG halves.
    """

    def __init__(self, layers: dict[str, torch.nn.Module]):
        self.layers = layers
        self.stored: dict[tuple[str, str], torch.Tensor] = {}
        self.mask: torch.Tensor | None = None

    @contextmanager
    def recording(self) -> Iterator[None]:
        self.stored.clear()
        with self._hooks(self._record):
            yield

    @contextmanager
    def blending(self, mask: torch.Tensor) -> Iterator[None]:
        if not self.stored:
            raise RuntimeError("KVFusion.blending needs a recorded reference pass first")
        self.mask = mask
        try:
            with self._hooks(self._blend):
                yield
        finally:
            self.mask = None

    @contextmanager
    def _hooks(self, fn) -> Iterator[None]:
        handles = []
        for name, attn in self.layers.items():
            for part in ("to_k", "to_v"):
                handles.append(getattr(attn, part).register_forward_hook(
                    lambda module, args, output, key=(name, part): fn(key, output)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _record(self, key, output):
        self.stored[key] = output.detach()

    def _blend(self, key, output):
        reference = self.stored[key]
        if reference.shape != output.shape:
            raise ValueError(f"reference and target passes differ in shape at {key}: "
                             f"{tuple(reference.shape)} vs {tuple(output.shape)}")
        height, width = self.mask.shape[-2:]
        scale = (output.shape[1] / (height * width)) ** 0.5  # the layer's grid has the latent's aspect
        size = (round(height * scale), round(width * scale))
        mask = F.interpolate(self.mask[:, None].float(), size=size, mode="nearest").flatten(1)
        mask = mask.repeat(output.shape[0] // mask.shape[0], 1)[..., None].to(output.dtype)
        return mask * reference + (1 - mask) * output


@torch.no_grad()
def fused_targets(
    sampler,
    unet,
    scheduler,
    reference,
    base,
    negative_embeds: torch.Tensor,
    base_generators: list[torch.Generator],
    items,
    fuse_steps: tuple[int, int],
    fusion: KVFusion,
    capture: dict[str, torch.nn.Module],
    capture_size: tuple[int, int],
):
    """Denoise D-Fusion targets: each starts from its base's initial noise, reuses the base's per-step
    noise (replayed from `base_generators`, seeded as at sampling) and, on steps [start, end), reads
    self-attention K/V blended from its reference under the reference's item mask.

    `reference` and `base` are stored trajectories (rows paired), so per fused step there are exactly
    two UNet passes — reference (records K/V and attention) and target — and one on unfused steps;
    the base is never recomputed. Returns (target Trajectory, per-step masks (n, B, h, w)).
    """
    grid, prev_grid = sampler.step_grid(scheduler)
    latents = base.latents[:, 0]
    device = latents.device
    draw_noise(latents.shape, base_generators, device)  # the base's initial noise: already stored
    chain, log_probs, masks = [latents], [], []
    store = AttentionStore()
    for j in range(sampler.num_steps):
        t, t_prev = grid[j], prev_grid[j]
        if fuse_steps[0] <= j < fuse_steps[1]:
            store.reset()
            with attention_processors(capture, CaptureProcessor(store)), fusion.recording():
                guided_noise(unet, reference.latents[:, j], t, reference.prompt_embeds, negative_embeds,
                             sampler.guidance_scale)
            maps = item_attention(store.mean(), items.weights, capture_size)
            mask = absolute_masks(maps, items.valid, items.threshold).any(dim=1).float()
            with fusion.blending(mask):
                eps = guided_noise(unet, chain[-1], t, base.prompt_embeds, negative_embeds, sampler.guidance_scale)
        else:
            mask = torch.zeros(latents.shape[0], *capture_size, device=device)
            eps = guided_noise(unet, chain[-1], t, base.prompt_embeds, negative_embeds, sampler.guidance_scale)
        noise = draw_noise(latents.shape, base_generators, device)
        step = ddim_step(scheduler, eps, t, t_prev, chain[-1], sampler.eta, noise=noise)
        chain.append(step.prev_sample)
        log_probs.append(step.log_prob)
        masks.append(mask)
    target = Trajectory(latents=torch.stack(chain, 1), timesteps=base.timesteps, prev_timesteps=base.prev_timesteps,
                        log_probs=torch.stack(log_probs, 1), prompt_embeds=base.prompt_embeds)
    return target, torch.stack(masks)
