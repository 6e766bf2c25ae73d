"""CLIP score reward: raw cosine similarity of OpenCLIP image and prompt embeddings.

B²-DiffuRL and D-Fusion reward prompt alignment with this score (no ×100 logit scale, no clamping).
The model is loaded on the first call, so composing and instantiating configs stays cheap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from alignlab.rewards.chunked import ChunkedReward
from alignlab.errors import ConfigError, WeightsNotFoundError

# open_clip architecture files (JSON, named after the model) that plug-ins add, the shapes world's CLIP among
# them; OpenClip makes open_clip know them before it looks a model name up.
MODEL_CONFIGS: list = []


def resize_center_crop(
    images: torch.Tensor,
    size: int,
    crop: tuple[int, int],
    interpolation: str = "bicubic",
    offset=round,
) -> torch.Tensor:
    """Resize the shorter side to `size` (antialiased, longer side truncated like torchvision's
    Resize(int) and transformers' CLIP processor), then center crop to `crop` = (height, width).

    `offset` turns the fractional crop margin into an index: `round` for torchvision's CenterCrop,
    `int` for transformers' image processors.
    """
    height, width = images.shape[-2:]
    resized = (int(size * height / width), size) if width <= height else (size, int(size * width / height))
    images = F.interpolate(images, size=resized, mode=interpolation, align_corners=False, antialias=True)
    top, left = int(offset((resized[0] - crop[0]) / 2)), int(offset((resized[1] - crop[1]) / 2))
    return images[..., top : top + crop[0], left : left + crop[1]]


def weights_not_found(model_name: str, pretrained: str, key: str) -> WeightsNotFoundError:
    return WeightsNotFoundError(f"CLIP weights {pretrained!r} for {model_name} are neither an open_clip "
                                f"pretrained tag nor an existing file; pass {key}=/path/to/checkpoint.")


class OpenClip:
    """An OpenCLIP model with open_clip's eval transform done on tensors.

    Shared by the rewards built on OpenCLIP; `model_key` and `pretrained_key` are the config keys
    that the error messages tell the user to set.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str | None,
        device: torch.device,
        model_key: str = "reward.model_name",
        pretrained_key: str = "reward.pretrained",
    ):
        import open_clip  # importing open_clip takes seconds; only pay for it when the reward is used

        for config in MODEL_CONFIGS:  # plug-ins' architectures join open_clip's list (once)
            if config.stem not in open_clip.list_models():
                open_clip.add_model_config(config)
        if model_name not in open_clip.list_models():
            raise ConfigError(
                f"{model_key}={model_name!r} is not an open_clip model; pick one of open_clip.list_models()."
            )
        is_tag = pretrained is not None and open_clip.is_pretrained_cfg(model_name, pretrained)
        if pretrained is not None and not is_tag and not os.path.isfile(pretrained):
            raise weights_not_found(model_name, pretrained, pretrained_key)
        self.device = device
        try:
            with quiet_info():
                model = open_clip.create_model(model_name, pretrained=pretrained, device=device)
        except RuntimeError as error:  # open_clip wraps every download failure in a RuntimeError
            if not is_tag:
                raise
            raise WeightsNotFoundError(
                f"Could not download the {pretrained!r} weights of CLIP model {model_name} "
                f"(offline?); pass {pretrained_key}=/path/to/checkpoint, or use a reward that needs no download: "
                f"jpeg_compressibility, jpeg_incompressibility, oracle (world prompts), or clip on model=world."
            ) from error

        cfg = model.visual.preprocess_cfg
        height, width = (cfg["size"], cfg["size"]) if isinstance(cfg["size"], int) else cfg["size"]
        if cfg["resize_mode"] != "shortest" or height != width:
            raise ConfigError(
                f"{model_key}={model_name!r} needs {cfg['resize_mode']!r} resizing to "
                f"{height}x{width}, but only square 'shortest' resizing is implemented."
            )
        self.image_size = height
        self.interpolation = "bilinear" if cfg["interpolation"] == "bilinear" else "bicubic"
        self.mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
        with quiet_info():
            self.tokenizer = open_clip.get_tokenizer(model_name)
        self.model = model.eval()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """open_clip's eval transform on tensors: resize the shorter side, center crop, normalise."""
        size = self.image_size
        images = resize_center_crop(images, size, (size, size), self.interpolation, offset=round)
        return (images - self.mean) / self.std

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings of images in [0, 1]."""
        return self.model.encode_image(self.preprocess(images.to(self.device, torch.float32)), normalize=True)

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings."""
        return self.model.encode_text(self.tokenizer(prompts).to(self.device), normalize=True)


@contextmanager
def quiet_info() -> Iterator[None]:
    """No INFO records while the block runs: open_clip logs each loading step on the root logger."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(previous)


class ClipScore(ChunkedReward):
    """Cosine similarity between each image and its prompt under an OpenCLIP model."""

    name = "clip"

    def __init__(
        self,
        model_name: str = "ViT-H-14",
        pretrained: str | None = "laion2b_s32b_b79k",
        batch_size: int = 32,
        device: str | None = None,
    ):
        if pretrained is not None and "/" in pretrained and not os.path.isfile(pretrained):
            raise weights_not_found(model_name, pretrained, "reward.pretrained")  # a path: no tag has a '/'
        self.model_name = model_name
        self.pretrained = pretrained  # an open_clip pretrained tag or a checkpoint file; None: random
        self.batch_size = batch_size
        self.device = device
        self._clip: OpenClip | None = None

    def _load(self, device: torch.device) -> None:
        self._clip = OpenClip(self.model_name, self.pretrained, device)

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return (self._clip.encode_images(images) * self._clip.encode_texts(prompts)).sum(dim=-1)

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (N, D) of images in [0, 1], in chunks of batch_size: the space in
        which alignlab.evaluate measures the diversity of a prompt's images."""
        self.load(images.device)
        return torch.cat([self._clip.encode_images(images[rows]) for rows in self.chunks(len(images))]).float()

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (N, D) of prompts, in chunks of batch_size."""
        self.load(torch.device("cpu"))
        return torch.cat([self._clip.encode_texts(prompts[rows]) for rows in self.chunks(len(prompts))]).float()
