"""LAION aesthetic predictor reward (DDPO's "aesthetic"): an MLP on L2-normalised CLIP ViT-L/14 image
embeddings, as in christophschuhmann/improved-aesthetic-predictor.

The MLP weights (e.g. sac+logos+ava1-l14-linearMSE.pth) come from a local file given as `head_path`,
which must exist when the reward is built; the CLIP model and the head are loaded on the first call,
so composing and instantiating configs stays cheap.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from alignlab.rewards.chunked import ChunkedReward
from alignlab.errors import ConfigError, WeightsNotFoundError
from alignlab.rewards.clip import OpenClip

EMBED_DIM = 768


def aesthetic_mlp() -> nn.Sequential:
    """The predictor's `layers` Sequential: its state dict keys are layers.{0,2,4,6,7}.{weight,bias}."""
    return nn.Sequential(
        nn.Linear(EMBED_DIM, 1024),
        nn.Dropout(0.2),
        nn.Linear(1024, 128),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )


def check_head_path(path: str | None) -> None:
    if path is None or not os.path.isfile(path):
        raise WeightsNotFoundError(
            f"The aesthetic reward needs the LAION aesthetic predictor's MLP weights (got {path!r}); "
            "pass reward.head_path=/path/to/sac+logos+ava1-l14-linearMSE.pth."
        )


def load_aesthetic_head(path: str | None) -> nn.Sequential:
    """The MLP with the weights of a .pth/.safetensors state dict in the original `layers.N` layout."""
    check_head_path(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state_dict = load_file(path)
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "layers."
    head = aesthetic_mlp()
    expected = {prefix + key for key in head.state_dict()}
    if not isinstance(state_dict, dict) or set(state_dict) != expected:
        raise ConfigError(
            f"reward.head_path={path!r} is not the LAION aesthetic predictor's state dict "
            f"(expected exactly the keys {sorted(expected)})."
        )
    try:
        head.load_state_dict({key[len(prefix) :]: value for key, value in state_dict.items()})
    except RuntimeError as error:  # shape mismatch
        raise ConfigError(
            f"reward.head_path={path!r} does not fit the 768-1024-128-64-16-1 aesthetic MLP: {error}"
        ) from error
    return head.float().eval()


class AestheticScore(ChunkedReward):
    """The LAION aesthetic predictor's score (about 1-10) of each image; prompts are ignored."""

    name = "aesthetic"

    def __init__(
        self,
        head_path: str | None = None,
        clip_model: str = "ViT-L-14-quickgelu",  # OpenAI's weights need QuickGELU
        clip_pretrained: str | None = "openai",
        batch_size: int = 32,
        device: str | None = None,
    ):
        check_head_path(head_path)  # a missing file fails before a run writes anything
        self.head_path = head_path
        self.clip_model = clip_model
        self.clip_pretrained = clip_pretrained
        self.batch_size = batch_size
        self.device = device
        self._clip: OpenClip | None = None
        self._head: nn.Sequential | None = None

    def _load(self, device: torch.device) -> None:
        head = load_aesthetic_head(self.head_path)  # the cheap checks first
        clip = OpenClip(
            self.clip_model,
            self.clip_pretrained,
            device,
            model_key="reward.clip_model",
            pretrained_key="reward.clip_pretrained",
        )
        if clip.model.visual.output_dim != EMBED_DIM:
            raise ConfigError(
                f"reward.clip_model={self.clip_model!r} embeds images in {clip.model.visual.output_dim} "
                f"dimensions, but the aesthetic MLP takes {EMBED_DIM} (CLIP ViT-L/14)."
            )
        self._head, self._clip = head.to(device), clip

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self._head(self._clip.encode_images(images).float()).squeeze(-1)
