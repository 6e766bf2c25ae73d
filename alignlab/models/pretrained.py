"""Stable Diffusion components from a hub id or a local diffusers directory."""

from __future__ import annotations

import os

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from alignlab.errors import WeightsNotFoundError
from alignlab.models.diffusion import DiffusionModel, torch_dtype


def load_pretrained(
    pretrained: str, resolution: int = 512, revision: str | None = None, dtype: str = "float32"
) -> DiffusionModel:
    """Load UNet, VAE, text encoder, tokenizer and a DDIM scheduler from `pretrained`.

    `dtype` applies to the frozen weights (the papers keep them in fp16); trainable parameters are
    cast to fp32 when LoRA is added.
    """
    kwargs = {"revision": revision, "torch_dtype": torch_dtype(dtype)}
    try:
        unet = UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet", **kwargs)
        vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae", **kwargs)
        text_encoder = CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder", **kwargs)
        tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer", revision=revision)
        scheduler = DDIMScheduler.from_pretrained(pretrained, subfolder="scheduler", revision=revision)
    except (OSError, ValueError) as error:
        where = "local directory" if os.path.isdir(pretrained) else "hub id (and no local directory of that name)"
        raise WeightsNotFoundError(
            f"could not load Stable Diffusion weights from the {where} '{pretrained}' "
            f"({type(error).__name__}); pass model.pretrained=/path/to/a/diffusers/directory with "
            "unet/, vae/, text_encoder/, tokenizer/ and scheduler/ subfolders"
        ) from error
    return DiffusionModel(unet, vae, text_encoder.eval(), tokenizer, scheduler, resolution)
