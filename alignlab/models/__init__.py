"""Model construction: SD from weights, tiny random SD look-alikes, LoRA."""

from alignlab.models.diffusion import DiffusionModel
from alignlab.models.lora import (add_lora, frozen_reference, require_reference, save_lora, trainable_parameters,
                                  weights_held)
from alignlab.models.pretrained import load_pretrained
from alignlab.models.tiny import build_tiny

__all__ = ["DiffusionModel", "add_lora", "build_tiny", "frozen_reference", "load_pretrained", "require_reference",
           "save_lora", "trainable_parameters", "weights_held"]
