"""CLIP score reward: raw cosine similarity of OpenCLIP image and prompt embeddings.

B²-DiffuRL and D-Fusion reward prompt alignment with this score (no ×100 logit scale, no clamping).
The model is loaded on the first call, so composing and instantiating configs stays cheap.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from alignlab.errors import ConfigError, WeightsNotFoundError


class ClipScore:
    """Cosine similarity between each image and its prompt under an OpenCLIP model."""

    name = "clip"

    def __init__(
        self,
        model_name: str = "ViT-H-14",
        pretrained: str | None = "laion2b_s32b_b79k",
        batch_size: int = 32,
        device: str | None = None,
    ):
        self.model_name = model_name
        self.pretrained = pretrained  # an open_clip pretrained tag or a checkpoint file; None: random
        self.batch_size = batch_size
        self.device = device
        self._model = None

    def _load(self, default_device: torch.device) -> None:
        import open_clip  # importing open_clip takes seconds; only pay for it when the reward is used

        if self.model_name not in open_clip.list_models():
            raise ConfigError(
                f"reward.model_name={self.model_name!r} is not an open_clip model; "
                "pick one of open_clip.list_models()."
            )
        is_tag = self.pretrained is not None and open_clip.is_pretrained_cfg(self.model_name, self.pretrained)
        if self.pretrained is not None and not is_tag and not os.path.isfile(self.pretrained):
            raise WeightsNotFoundError(
                f"CLIP weights {self.pretrained!r} for {self.model_name} are neither an open_clip "
                "pretrained tag nor an existing file; pass reward.pretrained=/path/to/checkpoint."
            )
        self._device = torch.device(self.device) if self.device else default_device
        try:
            model = open_clip.create_model(self.model_name, pretrained=self.pretrained, device=self._device)
        except RuntimeError as error:  # open_clip wraps every download failure in a RuntimeError
            if not is_tag:
                raise
            raise WeightsNotFoundError(
                f"Could not download the {self.pretrained!r} weights of CLIP model {self.model_name} "
                "(offline?); pass reward.pretrained=/path/to/checkpoint."
            ) from error

        cfg = model.visual.preprocess_cfg
        height, width = (cfg["size"], cfg["size"]) if isinstance(cfg["size"], int) else cfg["size"]
        if cfg["resize_mode"] != "shortest" or height != width:
            raise ConfigError(
                f"reward.model_name={self.model_name!r} needs {cfg['resize_mode']!r} resizing to "
                f"{height}x{width}, but ClipScore only implements square 'shortest' resizing."
            )
        self._image_size = height
        self._interpolation = "bilinear" if cfg["interpolation"] == "bilinear" else "bicubic"
        self._mean = torch.tensor(cfg["mean"], device=self._device).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg["std"], device=self._device).view(1, 3, 1, 1)
        self._tokenizer = open_clip.get_tokenizer(self.model_name)
        self._model = model.eval()

    def _preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """open_clip's eval transform on tensors: resize the shorter side, center crop, normalise."""
        size = self._image_size
        height, width = images.shape[-2:]
        # torchvision's Resize(int) truncates the longer side; match it exactly.
        resized = (int(size * height / width), size) if width <= height else (size, int(size * width / height))
        images = F.interpolate(
            images, size=resized, mode=self._interpolation, align_corners=False, antialias=True
        )
        top, left = round((resized[0] - size) / 2), round((resized[1] - size) / 2)
        images = images[..., top : top + size, left : left + size]
        return (images - self._mean) / self._std

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if len(prompts) != len(images):
            raise ValueError(f"Got {len(images)} images but {len(prompts)} prompts.")
        if self._model is None:
            self._load(images.device)
        scores = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = images[start : start + self.batch_size].to(self._device, torch.float32)
            tokens = self._tokenizer(prompts[start : start + self.batch_size]).to(self._device)
            image_features = self._model.encode_image(self._preprocess(chunk), normalize=True)
            text_features = self._model.encode_text(tokens, normalize=True)
            scores.append((image_features * text_features).sum(dim=-1))
        return torch.cat(scores).float().to(images.device)
