"""A tiny random open_clip model saved in the real on-disk format, and the prompts and images the
reward tests score with it."""

import json
from pathlib import Path

import torch

import alignlab  # noqa: F401  (before open_clip: repairs the torchvision import on CPU torch)
import open_clip  # noqa: E402


def save_random_open_clip(directory: Path, name: str, config: dict) -> str:
    """Register `config` as open_clip model `name` and save seeded random weights; returns the path."""
    config_path = directory / f"{name}.json"  # open_clip names the model after the file stem
    config_path.write_text(json.dumps(config))
    open_clip.add_model_config(config_path)
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    checkpoint = directory / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), checkpoint)
    return str(checkpoint)


PROMPTS = ["a red cube", "a cat on a sofa", "two dogs", "a blue sky", "an apple"]


def random_images(n, height=40, width=56, seed=0):
    return torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(seed))
