"""The world text-to-image model: Stable Diffusion's code path at 32×32, with weights shipped in the package.

UNet2DConditionModel with attention transformer blocks at 16×16, 8×8 and 4×4 of the 16×16 latent,
a CLIPTextModel with the real CLIP BPE tokenizer, the exact Haar "VAE" (latent.py) and SD's DDIM
scheduler with v-prediction. `python -m alignlab.world.build` trains it; `build_world()` loads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from alignlab.errors import WeightsNotFoundError
from alignlab.models.diffusion import DiffusionModel
from alignlab.models.tiny import sd_scheduler
from alignlab.models.tokenizer import clip_tokenizer
from alignlab.world.latent import HaarAutoencoder

WEIGHTS = Path(__file__).parent / "weights"
RESOLUTION = 32
PREDICTION_TYPE = "v_prediction"
# 1 / std of the Haar latents of world renders (0.49 over 2048 renders, seed 0): unit-scale latents, as in SD.
SCALING_FACTOR = 2.0

# The UNet a new build trains; a weights directory records its own in unet.json (the shipped weights may
# predate a change here and still load).
UNET = dict(
    sample_size=16,
    in_channels=12,
    out_channels=12,
    block_out_channels=(32, 64, 128),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D",) * 3,  # attention at 16×16, 8×8 and 4×4
    up_block_types=("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=16,
)
TEXT_ENCODER = dict(
    vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
    max_position_embeddings=77, projection_dim=64,
)


def world_components(seed: int = 0, unet_config: dict = UNET) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """Freshly initialised UNet and text encoder (the starting point of pre-training)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return UNet2DConditionModel(**unet_config), CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER))


def save_weights(directory: Path, unet: UNet2DConditionModel, text_encoder: CLIPTextModel) -> None:
    """fp16 safetensors of both modules and the UNet's architecture (unet.json), as build_world reads them."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, module in (("unet", unet), ("text_encoder", text_encoder)):
        save_file({k: v.half().contiguous() for k, v in module.state_dict().items()}, directory / f"{name}.safetensors")
    architecture = {key: unet.config[key] for key in UNET}
    (directory / "unet.json").write_text(json.dumps(architecture, indent=1) + "\n")


def assemble(unet: UNet2DConditionModel, text_encoder: CLIPTextModel) -> DiffusionModel:
    vae = HaarAutoencoder(scaling_factor=SCALING_FACTOR)
    return DiffusionModel(unet, vae, text_encoder.eval(), clip_tokenizer(), sd_scheduler(PREDICTION_TYPE), RESOLUTION)


def build_world(weights: str | None = None) -> DiffusionModel:
    """The pre-trained world model; `weights`: a directory written by save_weights (None: the shipped one)."""
    directory = Path(weights) if weights else WEIGHTS
    files = {name: directory / f"{name}.safetensors" for name in ("unet", "text_encoder")}
    files["architecture"] = directory / "unet.json"
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise WeightsNotFoundError(
            f"world model weights not found ({', '.join(missing)}); run `make world` "
            "or pass model.weights=/path/to/dir."
        )
    unet, text_encoder = world_components(unet_config=json.loads(files["architecture"].read_text()))
    unet.load_state_dict({k: v.float() for k, v in load_file(files["unet"]).items()})
    text_encoder.load_state_dict({k: v.float() for k, v in load_file(files["text_encoder"]).items()})
    return assemble(unet, text_encoder)
