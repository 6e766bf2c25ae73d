"""Rewards: JPEG sizes match PIL, and ClipScore matches open_clip on a tiny random model."""

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

import alignlab  # noqa: F401  (before open_clip: repairs the torchvision import on CPU torch)
import open_clip
from open_clip.transform import PreprocessCfg, image_transform_v2

from tests.tiny_clip import PROMPTS, random_images, save_random_open_clip
from alignlab.errors import ConfigError, WeightsNotFoundError
from alignlab.rewards import ClipScore, JpegCompressibility, JpegIncompressibility

TINY_CLIP = "alignlab-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}


# --- JPEG -------------------------------------------------------------------------------------------


def test_flat_image_is_more_compressible_than_noise():
    images = torch.cat([torch.full((1, 3, 64, 64), 0.5), random_images(1, 64, 64)])
    flat, noise = JpegCompressibility()(images, ["", ""])
    assert flat > noise


def test_jpeg_size_matches_pil():
    image = random_images(1, 48, 40)
    pixels = np.clip(np.round(image[0].numpy() * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    expected_kb = len(buffer.getvalue()) / 1000
    assert JpegIncompressibility()(image, [""]).item() == pytest.approx(expected_kb)
    assert JpegCompressibility()(image, [""]).item() == pytest.approx(-expected_kb)


def test_jpeg_rewards_shape_sign_and_batch_independence():
    images = random_images(3, 32, 32)
    images[1] = 0.25  # a flat image among noise
    compressibility = JpegCompressibility()(images, [""] * 3)
    assert compressibility.shape == (3,)
    assert compressibility.dtype == torch.float32
    assert compressibility.device == images.device
    assert torch.equal(JpegIncompressibility()(images, [""] * 3), -compressibility)
    alone = torch.cat([JpegCompressibility()(image[None], [""]) for image in images])
    assert torch.equal(alone, compressibility)


# --- CLIP -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip_checkpoint(tmp_path_factory):
    """Register a tiny open_clip config and save random weights for it; return the checkpoint path."""
    return save_random_open_clip(tmp_path_factory.mktemp("tiny_clip"), TINY_CLIP, TINY_CLIP_CONFIG)


@pytest.fixture(scope="module")
def tiny_clip_score(tiny_clip_checkpoint):
    return ClipScore(model_name=TINY_CLIP, pretrained=tiny_clip_checkpoint, batch_size=2)


def reference_clip_scores(checkpoint, images, prompts):
    """Cosine similarities computed with open_clip's own eval transform, one image at a time."""
    model = open_clip.create_model(TINY_CLIP, pretrained=checkpoint).eval()
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    tokenizer = open_clip.get_tokenizer(TINY_CLIP)
    with torch.no_grad():
        image_features = model.encode_image(torch.stack([preprocess(image) for image in images]))
        text_features = model.encode_text(tokenizer(prompts))
    return torch.nn.functional.cosine_similarity(image_features, text_features, dim=-1)


@pytest.mark.parametrize("height, width", [(40, 56), (56, 40)])
def test_clip_score_matches_open_clip(tiny_clip_score, tiny_clip_checkpoint, height, width):
    images = random_images(len(PROMPTS), height, width)
    scores = tiny_clip_score(images, PROMPTS)
    assert scores.shape == (len(PROMPTS),)
    assert scores.dtype == torch.float32
    assert scores.device == images.device
    assert scores.abs().max() <= 1
    expected = reference_clip_scores(tiny_clip_checkpoint, images, PROMPTS)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)


def test_clip_score_is_batch_independent_and_deterministic(tiny_clip_score, tiny_clip_checkpoint):
    images = random_images(len(PROMPTS), height=64, width=48, seed=1)
    one_batch = ClipScore(model_name=TINY_CLIP, pretrained=tiny_clip_checkpoint, batch_size=8)
    scores = tiny_clip_score(images, PROMPTS)
    torch.testing.assert_close(one_batch(images, PROMPTS), scores, rtol=0, atol=1e-5)
    assert torch.equal(tiny_clip_score(images, PROMPTS), scores)


def test_clip_score_depends_on_the_prompt(tiny_clip_score):
    images = random_images(2)
    same_image = images[:1].expand(2, -1, -1, -1)
    scores = tiny_clip_score(same_image, PROMPTS[:2])
    assert scores[0] != scores[1]


def test_missing_checkpoint_file_raises_weights_not_found(tiny_clip_checkpoint, tmp_path):
    # The fixture registers TINY_CLIP, so the failure can only come from the missing file: a path fails
    # when the reward is built, a bare file name (it could have been a tag) at the first call.
    with pytest.raises(WeightsNotFoundError, match="reward.pretrained"):
        ClipScore(model_name=TINY_CLIP, pretrained=str(tmp_path / "missing.bin"))
    reward = ClipScore(model_name=TINY_CLIP, pretrained="missing.bin")
    with pytest.raises(WeightsNotFoundError, match="reward.pretrained"):
        reward(random_images(1), ["a cat"])


def test_tag_that_needs_download_raises_weights_not_found_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants

    # huggingface_hub reads these environment variables once, at import: patch the constants too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # empty cache
    reward = ClipScore(model_name="ViT-B-32", pretrained="laion2b_s34b_b79k")
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError, match="reward.pretrained") as error:
        reward(random_images(1), ["a cat"])
    assert time.monotonic() - start < 10
    assert "ViT-B-32" in str(error.value) and "\n" not in str(error.value)


def test_unknown_model_name_raises_config_error():
    with pytest.raises(ConfigError, match="reward.model_name"):
        ClipScore(model_name="ViT-Nope-1", pretrained=None)(random_images(1), ["a cat"])
