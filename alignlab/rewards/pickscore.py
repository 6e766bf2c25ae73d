"""PickScore reward (Kirstain et al. 2023): a CLIP ViT-H/14 fine-tuned on human preferences (Pick-a-Pic).

score = logit_scale.exp() * cosine(image, prompt), as in the PickScore README, with the
transformers CLIPModel "yuvalkirstain/PickScore_v1" and the processor of
"laion/CLIP-ViT-H-14-laion2B-s32B-b79K". Images are preprocessed as tensors (resize the shorter
side, bicubic antialiased, center crop, normalise). The model is loaded on the first call.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

from alignlab.rewards.chunked import ChunkedReward
from alignlab.errors import WeightsNotFoundError
from alignlab.rewards.clip import resize_center_crop

log = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def is_hub_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


class PickScore(ChunkedReward):
    """PickScore of each image for its prompt (about 18-23 for real images)."""

    name = "pickscore"

    def __init__(
        self,
        model: str = "yuvalkirstain/PickScore_v1",
        processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        batch_size: int = 32,
        device: str | None = None,
    ):
        if not os.path.isdir(model) and not is_hub_id(model):  # a missing local directory fails before a run writes
            raise WeightsNotFoundError(f"reward.model={model!r} is neither a local model directory nor a hub id; "
                                       "pass reward.model=/path/to/PickScore_v1.")
        self.model = model  # a hub id or a local directory saved with save_pretrained
        self.processor = processor  # a hub id or a local directory with the processor's files
        self.batch_size = batch_size
        self.device = device
        self._model = None

    def _load_processor(self, image_size: int) -> None:
        """The tokenizer and image settings of `processor`; when it is a hub id that cannot be
        loaded (offline, not cached), OpenAI CLIP's, which the laion ViT-H/14 processor uses."""
        from transformers import AutoTokenizer, CLIPImageProcessor

        try:
            image_processor = CLIPImageProcessor.from_pretrained(self.processor)
            self._tokenizer = AutoTokenizer.from_pretrained(self.processor)
            size = image_processor.size
            self._size = size["shortest_edge"] if "shortest_edge" in size else min(size["height"], size["width"])
            self._crop = (image_processor.crop_size["height"], image_processor.crop_size["width"])
            mean, std = image_processor.image_mean, image_processor.image_std
        except OSError as error:
            if os.path.isdir(self.processor):
                raise WeightsNotFoundError(
                    f"Could not load a CLIP processor from {self.processor!r} ({error}); "
                    "pass reward.processor=/path/to/processor or a hub id."
                ) from error
            from alignlab.models.tokenizer import clip_tokenizer

            log.info("Processor %r unavailable; using OpenAI CLIP's tokenizer, mean and std.", self.processor)
            self._tokenizer = clip_tokenizer()
            self._size, self._crop = image_size, (image_size, image_size)
            mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self._device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self._device).view(1, 3, 1, 1)

    def _load(self, device: torch.device) -> None:
        from transformers import CLIPModel

        self._device = device
        try:
            model = CLIPModel.from_pretrained(self.model, dtype=torch.float32)
        except OSError as error:  # transformers reports missing files and failed downloads as OSError
            raise WeightsNotFoundError(
                f"Could not load the PickScore model {self.model!r} (not a local model directory, and "
                "not downloadable: offline?); pass reward.model=/path/to/PickScore_v1."
            ) from error
        self._load_processor(model.config.vision_config.image_size)
        self._model = model.to(self._device).eval()

    def _preprocess(self, images: torch.Tensor) -> torch.Tensor:
        images = resize_center_crop(images, self._size, self._crop, "bicubic", offset=int)
        return (images - self._mean) / self._std

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        text = self._tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        text = text.to(self._device)
        pixels = self._preprocess(images.to(self._device, torch.float32))
        image_features = self._model.get_image_features(pixel_values=pixels).pooler_output
        text_features = self._model.get_text_features(
            input_ids=text["input_ids"], attention_mask=text["attention_mask"]
        ).pooler_output
        cosine = (F.normalize(image_features, dim=-1) * F.normalize(text_features, dim=-1)).sum(dim=-1)
        return self._model.logit_scale.exp() * cosine
