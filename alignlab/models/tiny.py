"""Random-weight models with exactly SD's code path, built from configs (tests, `model=tiny`)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from alignlab.models.diffusion import DiffusionModel, torch_dtype
from alignlab.models.tokenizer import clip_tokenizer


def sd_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    """The DDIM scheduler configuration of SD 1.x / 2.x-base."""
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )


def build_tiny(
    resolution: int = 32,
    seed: int = 0,
    block_out_channels: tuple[int, ...] = (32, 64),
    cross_attention_dim: int = 32,
    attention_head_dim: int | tuple[int, ...] = 8,
    prediction_type: str = "epsilon",
    dtype: str = "float32",
) -> DiffusionModel:
    """A few-hundred-thousand-parameter SD look-alike: cross-attention UNet, KL VAE (×2 down), CLIP
    text encoder with the real tokenizer. Weights are random but fixed by `seed`; `dtype` is the frozen
    weights' dtype, as load_pretrained's (so half-precision runs are testable on a CPU)."""
    levels = len(block_out_channels)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=resolution // 2,
            in_channels=4,
            out_channels=4,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, sample_size=resolution,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408, hidden_size=cross_attention_dim, intermediate_size=2 * cross_attention_dim,
                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                projection_dim=cross_attention_dim,
            )
        )
    model = DiffusionModel(unet, vae, text_encoder.eval(), clip_tokenizer(), sd_scheduler(prediction_type), resolution)
    return model.to(torch_dtype(dtype))
