"""The text-to-image model every method trains: SD's components behind one small interface."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from alignlab.errors import ConfigError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    """model.dtype's value as a torch dtype."""
    if name not in DTYPES:
        raise ConfigError(f"model.dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


class DiffusionModel(nn.Module):
    """UNet + VAE + text encoder + tokenizer + DDIM scheduler, as in a StableDiffusionPipeline.

    Only the UNet is trained (LoRA or full); the rest is frozen. `resolution` is the image size. The
    components' dtype as built is the frozen dtype (model.dtype): half precision runs under `autocast`.
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, resolution: int):
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.scheduler, self.resolution = tokenizer, scheduler, resolution
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def frozen_dtype(self) -> torch.dtype:
        """The frozen weights' dtype (the UNet's first parameter, conv_in, is never a LoRA one)."""
        return next(self.unet.parameters()).dtype

    def autocast(self):
        """Where the frozen weights are half precision, the context every UNet call runs in: autocast to
        that dtype, as the papers sample (latents and LoRA stay float32). A no-op in float32."""
        if self.frozen_dtype == torch.float32:
            return nullcontext()
        return torch.autocast(next(self.unet.parameters()).device.type, dtype=self.frozen_dtype)

    def latent_shape(self, batch: int) -> tuple[int, int, int, int]:
        side = self.resolution // self.vae_scale
        return (batch, self.unet.config.in_channels, side, side)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings exactly as StableDiffusionPipeline computes them (max-length padding)."""
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids.to(self.text_encoder.device))[0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [0, 1], (B, 3, H, W) float32."""
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        images = self.vae.decode(latents).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)
