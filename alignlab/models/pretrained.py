"""Stable Diffusion components from a hub id or a local diffusers directory."""

from __future__ import annotations

import os

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from alignlab.errors import ConfigError, WeightsNotFoundError
from alignlab.models.diffusion import DiffusionModel

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_pretrained(
    pretrained: str, resolution: int = 512, revision: str | None = None, dtype: str = "float32"
) -> DiffusionModel:
    """Load UNet, VAE, text encoder, tokenizer and a DDIM scheduler from `pretrained`.

    `dtype` applies to the frozen weights (the papers keep them in fp16); trainable parameters are
    cast to fp32 when LoRA is added.
    """
    if dtype not in _DTYPES:
        raise ConfigError(f"model.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    torch_dtype = _DTYPES[dtype]
    kwargs = {"revision": revision}
    try:
        unet = UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet", torch_dtype=torch_dtype, **kwargs)
        vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae", torch_dtype=torch_dtype, **kwargs)
        text_encoder = CLIPTextModel.from_pretrained(
            pretrained, subfolder="text_encoder", torch_dtype=torch_dtype, **kwargs
        )
        tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer", **kwargs)
        scheduler = DDIMScheduler.from_pretrained(pretrained, subfolder="scheduler", **kwargs)
    except (OSError, ValueError) as error:
        where = "local directory" if os.path.isdir(pretrained) else "hub id (and no local directory of that name)"
        raise WeightsNotFoundError(
            f"could not load Stable Diffusion weights from the {where} '{pretrained}' "
            f"({type(error).__name__}); pass model.pretrained=/path/to/a/diffusers/directory with "
            "unet/, vae/, text_encoder/, tokenizer/ and scheduler/ subfolders"
        ) from error
    return DiffusionModel(unet, vae, text_encoder.eval(), tokenizer, scheduler, resolution)
