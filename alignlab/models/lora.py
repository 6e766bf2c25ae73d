"""LoRA on the UNet through peft, the frozen reference, earlier weights held for a moment, and export a
diffusers pipeline can load."""

from __future__ import annotations

import os

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from alignlab.errors import ConfigError
from alignlab.models.diffusion import DiffusionModel

PAPER_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def add_lora(
    model: DiffusionModel,
    rank: int = 4,
    alpha: float | None = None,
    init: str | bool = "gaussian",
    target_modules: tuple[str, ...] | list[str] = PAPER_TARGETS,
) -> None:
    """Freeze the UNet and add a LoRA adapter (fp32, whatever the frozen dtype). alpha defaults to
    rank (scale 1), which is what the papers' LoRA attention processors computed."""
    model.unet.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=rank if alpha is None else alpha, init_lora_weights=init,
        target_modules=list(target_modules),
    )
    model.unet.add_adapter(config)
    for param in model.unet.parameters():
        if param.requires_grad:
            param.data = param.data.float()


def trainable_parameters(model: DiffusionModel) -> list[torch.nn.Parameter]:
    return [p for p in model.unet.parameters() if p.requires_grad]


def has_lora(model: DiffusionModel) -> bool:
    return bool(getattr(model.unet, "_hf_peft_config_loaded", False))


def require_reference(model: DiffusionModel) -> None:
    """frozen_reference switches the LoRA adapters off: a fully fine-tuned UNet has none to switch."""
    if not has_lora(model):
        raise ConfigError("this method compares the policy with the pre-trained model, which alignlab gets by "
                          "switching the LoRA adapters off: it needs finetune.mode=lora, got full")


@contextmanager
def frozen_reference(model: DiffusionModel) -> Iterator[None]:
    """The pre-trained model: the same UNet with its adapters switched off (no weight copy)."""
    model.unet.disable_adapters()
    try:
        yield
    finally:
        model.unet.enable_adapters()


@contextmanager
def weights_held(model: DiffusionModel, values: list[torch.Tensor]) -> Iterator[None]:
    """The trainable parameters set to `values` (e.g. the round's sampling policy, snapshotted when the round
    began) inside the block, the current ones restored after it."""
    params = trainable_parameters(model)
    current = [p.detach().clone() for p in params]
    with torch.no_grad():
        for param, value in zip(params, values, strict=True):
            param.copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for param, value in zip(params, current, strict=True):
                param.copy_(value)


def save_lora(model: DiffusionModel, directory: str | Path) -> None:
    """Write `pytorch_lora_weights.safetensors` for `pipeline.load_lora_weights(directory)`."""
    config = model.unet.peft_config["default"]
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(model.unet))
    StableDiffusionPipeline.save_lora_weights(
        str(directory), unet_lora_layers=layers, safe_serialization=True,
        unet_lora_adapter_metadata=config.to_dict(),
    )
    umask = os.umask(0)
    os.umask(umask)
    for file in Path(directory).glob("*.safetensors"):  # diffusers writes through a private 0600 temporary file
        file.chmod(0o666 & ~umask)
