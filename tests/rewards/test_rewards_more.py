"""Aesthetic, PickScore, HPS v2 and multi rewards on tiny random models saved in their real formats."""


import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import alignlab  # noqa: F401  (before open_clip / transformers: repairs the torchvision import on CPU torch)

from tests.tiny_clip import PROMPTS, random_images, save_random_open_clip
from alignlab.errors import ConfigError, WeightsNotFoundError
from alignlab.rewards import (
    AestheticScore,
    ClipScore,
    HPSv2,
    JpegCompressibility,
    JpegIncompressibility,
    MultiReward,
    PickScore,
    preload,
)
from alignlab.rewards.clip import OpenClip
from alignlab.run import CONF_DIR
from tests.hydra_app import run_inprocess

TINY_CLIP = "alignlab-tiny-clip-768"  # embeds in 768 dimensions, like ViT-L/14, for the aesthetic MLP
TINY_CLIP_CONFIG = {
    "embed_dim": 768,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}


def check_batch_independent_and_deterministic(make_reward, images, prompts):
    """(B,) float32 on the images' device, equal call to call, and per image as in one batch."""
    reward = make_reward(batch_size=2)
    scores = reward(images, prompts)
    assert scores.shape == (len(images),) and scores.dtype == torch.float32 and scores.device == images.device
    assert torch.isfinite(scores).all()
    assert torch.equal(reward(images, prompts), scores)
    alone = torch.cat([reward(image[None], [prompt]) for image, prompt in zip(images, prompts, strict=True)])
    torch.testing.assert_close(alone, scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(make_reward(batch_size=8)(images, prompts), scores, rtol=0, atol=1e-5)
    return scores


@pytest.fixture(scope="module")
def tiny_clip_checkpoint(tmp_path_factory):
    return save_random_open_clip(tmp_path_factory.mktemp("tiny_clip_768"), TINY_CLIP, TINY_CLIP_CONFIG)


# --- aesthetic --------------------------------------------------------------------------------------

AESTHETIC_SHAPES = {0: (1024, 768), 2: (128, 1024), 4: (64, 128), 6: (16, 64), 7: (1, 16)}


@pytest.fixture(scope="module")
def aesthetic_head(tmp_path_factory):
    """Random weights in the LAION predictor's key layout (layers.N of its Sequential) and the path."""
    generator = torch.Generator().manual_seed(1)
    state_dict = {}
    for index, (out_dim, in_dim) in AESTHETIC_SHAPES.items():
        state_dict[f"layers.{index}.weight"] = torch.randn(out_dim, in_dim, generator=generator) / in_dim**0.5
        state_dict[f"layers.{index}.bias"] = torch.randn(out_dim, generator=generator)
    path = tmp_path_factory.mktemp("aesthetic") / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(state_dict, path)
    return state_dict, str(path)


def test_aesthetic_matches_an_independent_mlp(tiny_clip_checkpoint, aesthetic_head):
    state_dict, path = aesthetic_head
    images = random_images(len(PROMPTS))
    scores = AestheticScore(head_path=path, clip_model=TINY_CLIP, clip_pretrained=tiny_clip_checkpoint)(images, PROMPTS)

    clip = OpenClip(TINY_CLIP, tiny_clip_checkpoint, torch.device("cpu"))
    with torch.no_grad():
        embedding = clip.model.encode_image(clip.preprocess(images))
    x = embedding / embedding.norm(dim=-1, keepdim=True)
    for index in (0, 2, 4, 6, 7):  # dropout is the identity at eval; no activations in the LAION MLP
        x = x @ state_dict[f"layers.{index}.weight"].T + state_dict[f"layers.{index}.bias"]
    torch.testing.assert_close(scores, x[:, 0], rtol=0, atol=1e-5)


def test_aesthetic_shape_determinism_batch_independence(tiny_clip_checkpoint, aesthetic_head):
    _, path = aesthetic_head
    scores = check_batch_independent_and_deterministic(
        lambda batch_size: AestheticScore(path, TINY_CLIP, tiny_clip_checkpoint, batch_size=batch_size),
        random_images(len(PROMPTS), 48, 32, seed=2),
        PROMPTS,
    )
    assert scores.std() > 0


def test_aesthetic_ignores_the_prompt(tiny_clip_checkpoint, aesthetic_head):
    reward = AestheticScore(aesthetic_head[1], TINY_CLIP, tiny_clip_checkpoint)
    image = random_images(1).expand(2, -1, -1, -1)
    scores = reward(image, PROMPTS[:2])
    assert scores[0] == scores[1]


def test_aesthetic_without_head_path_raises_weights_not_found(tmp_path):
    for head_path in (None, str(tmp_path / "missing.pth")):
        with pytest.raises(WeightsNotFoundError, match="reward.head_path") as error:
            AestheticScore(head_path=head_path)(random_images(1), ["a cat"])
        assert "\n" not in str(error.value)


def test_aesthetic_head_with_wrong_keys_raises_config_error(tmp_path, aesthetic_head):
    path = tmp_path / "head.pth"
    torch.save({key.replace("layers.", "mlp."): value for key, value in aesthetic_head[0].items()}, path)
    with pytest.raises(ConfigError, match="reward.head_path"):
        AestheticScore(head_path=str(path))(random_images(1), ["a cat"])


# --- PickScore --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pickscore_dir(tmp_path_factory):
    """A tiny random CLIPModel, its processor (non-default mean/std) and tokenizer, saved as on the hub."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from alignlab.models.tokenizer import clip_tokenizer

    directory = tmp_path_factory.mktemp("tiny_pickscore")
    config = CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            eos_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
        logit_scale_init_value=3.0,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory)
    CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.5, 0.4, 0.3],
        image_std=[0.2, 0.25, 0.3],
    ).save_pretrained(directory)
    clip_tokenizer().save_pretrained(directory)
    return str(directory)


def reference_pickscore(directory, images, prompts):
    """The PickScore README's computation, with transformers' own processor and tokenizer."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(directory).eval()
    pixels = CLIPImageProcessor.from_pretrained(directory)(images=list(images), do_rescale=False, return_tensors="pt")[
        "pixel_values"
    ]
    text = AutoTokenizer.from_pretrained(directory)(
        prompts, padding=True, truncation=True, max_length=77, return_tensors="pt"
    )
    with torch.no_grad():
        image_embs = model.get_image_features(pixel_values=pixels).pooler_output
        text_embs = model.get_text_features(**text).pooler_output
        image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
        text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
        return model.logit_scale.exp() * (text_embs * image_embs).sum(dim=-1)


@pytest.mark.parametrize("height, width", [(40, 56), (35, 32)])
def test_pickscore_matches_the_readme_computation(tiny_pickscore_dir, height, width):
    images = random_images(len(PROMPTS), height, width)
    scores = PickScore(model=tiny_pickscore_dir, processor=tiny_pickscore_dir)(images, PROMPTS)
    expected = reference_pickscore(tiny_pickscore_dir, images, PROMPTS)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)
    assert scores.abs().max() <= torch.tensor(3.0).exp() + 1e-4  # |cos| <= 1 times the scale


def test_pickscore_shape_determinism_batch_independence(tiny_pickscore_dir):
    check_batch_independent_and_deterministic(
        lambda batch_size: PickScore(tiny_pickscore_dir, tiny_pickscore_dir, batch_size=batch_size),
        random_images(len(PROMPTS), 36, 36, seed=3),
        PROMPTS,
    )


def test_pickscore_depends_on_the_prompt(tiny_pickscore_dir):
    image = random_images(1).expand(2, -1, -1, -1)
    scores = PickScore(tiny_pickscore_dir, tiny_pickscore_dir)(image, PROMPTS[:2])
    assert scores[0] != scores[1]


def test_pickscore_offline_raises_weights_not_found(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # empty cache
    for model in ("yuvalkirstain/PickScore_v1", str(tmp_path / "missing_dir")):
        with pytest.raises(WeightsNotFoundError, match="reward.model=") as error:
            PickScore(model=model)(random_images(1), ["a cat"])
        assert "\n" not in str(error.value)


# --- HPS v2 -----------------------------------------------------------------------------------------


def test_hpsv2_loads_a_state_dict_checkpoint_like_clip_score(tiny_clip_checkpoint, tmp_path):
    # HPS checkpoints are {"state_dict": ...} saved from a DDP model (module. prefixes).
    state_dict = torch.load(tiny_clip_checkpoint, weights_only=True)
    hps_checkpoint = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {f"module.{key}": value for key, value in state_dict.items()}}, hps_checkpoint)
    images = random_images(len(PROMPTS), 44, 36, seed=4)
    scores = HPSv2(pretrained=str(hps_checkpoint), model_name=TINY_CLIP)(images, PROMPTS)
    expected = ClipScore(model_name=TINY_CLIP, pretrained=tiny_clip_checkpoint)(images, PROMPTS)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)
    random_weights = ClipScore(model_name=TINY_CLIP, pretrained=None)(images, PROMPTS)
    assert not torch.allclose(scores, random_weights)  # the checkpoint's weights were loaded
    check_batch_independent_and_deterministic(
        lambda batch_size: HPSv2(str(hps_checkpoint), TINY_CLIP, batch_size=batch_size), images, PROMPTS
    )


def test_hpsv2_without_checkpoint_raises_weights_not_found(tmp_path):
    for pretrained in (None, str(tmp_path / "missing.pt")):
        with pytest.raises(WeightsNotFoundError, match="reward.pretrained=") as error:
            HPSv2(pretrained=pretrained)(random_images(1), ["a cat"])
        assert "\n" not in str(error.value)


# --- multi ------------------------------------------------------------------------------------------


def test_multi_is_the_weighted_sum_and_records_components():
    images = random_images(3, 32, 32)
    images[1] = 0.5
    reward = MultiReward({"small": JpegCompressibility(), "big": JpegIncompressibility()}, {"small": 2.0, "big": 0.5})
    total = reward(images, [""] * 3)
    size = JpegIncompressibility()(images, [""] * 3)
    torch.testing.assert_close(total, -2.0 * size + 0.5 * size)
    assert set(reward.last_components) == {"small", "big"}
    assert torch.equal(reward.last_components["small"], -size)
    assert torch.equal(reward.last_components["big"], size)
    check_batch_independent_and_deterministic(lambda batch_size: reward, images, [""] * 3)


def test_multi_weights_must_match_components():
    with pytest.raises(ConfigError, match="reward.weights"):
        MultiReward({"a": JpegCompressibility()}, {"a": 1.0, "b": 1.0})
    with pytest.raises(ConfigError, match="reward.weights"):
        MultiReward({"a": JpegCompressibility(), "b": JpegIncompressibility()}, {"a": 1.0})


def test_preloading_a_multi_reward_reads_each_components_weights(tiny_clip_checkpoint, offline):
    """alignlab.run preloads the reward before the first rollout: a component's missing weights must surface then."""
    present = ClipScore(model_name=TINY_CLIP, pretrained=tiny_clip_checkpoint)
    preload(MultiReward({"clip": present, "jpeg": JpegCompressibility()}, {"clip": 1.0, "jpeg": 1.0}), "cpu")
    assert present._clip is not None
    unreachable = ClipScore(model_name="ViT-B-32", pretrained="laion2b_s34b_b79k")  # a tag, offline
    with pytest.raises(WeightsNotFoundError, match="'laion2b_s34b_b79k' weights of CLIP model ViT-B-32"):
        preload(MultiReward({"clip": unreachable, "jpeg": JpegCompressibility()}, {"clip": 1.0, "jpeg": 1.0}), "cpu")
    preload(JpegCompressibility(), "cpu")  # no weights: nothing to do


def test_multi_config_instantiates_nested_rewards():
    reward = instantiate(OmegaConf.load(f"{CONF_DIR}/reward/multi.yaml"))
    assert isinstance(reward.components["jpeg_compressibility"], JpegCompressibility)
    assert isinstance(reward.components["jpeg_incompressibility"], JpegIncompressibility)
    images = random_images(2, 32, 32)
    size = JpegIncompressibility()(images, ["", ""])
    torch.testing.assert_close(reward(images, ["", ""]), -1.0 * size + 0.5 * size)


def test_a_run_logs_each_multi_component_and_reward_mean_is_their_weighted_sum(tmp_path):
    """Over a 2-batch round: each component's round mean is in metrics.jsonl (and so in W&B and the plot)."""
    row = run_inprocess(tmp_path, "reward=multi", "method.num_batches_per_round=2", "trainer.max_epochs=1",
                        "logger=none")[0]
    compressibility, incompressibility = row["reward/jpeg_compressibility"], row["reward/jpeg_incompressibility"]
    assert compressibility == pytest.approx(-incompressibility) and incompressibility > 0
    assert row["reward_mean"] == pytest.approx(1.0 * compressibility + 0.5 * incompressibility, rel=1e-6)
