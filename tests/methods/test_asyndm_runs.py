"""AsynDM end to end on the tiny model: method=asyndm writes its comparison, method=ddpo trains with
sampler=asyn, and the configs compose with the paper's settings."""

import json

import pytest
import torch
from PIL import Image

from alignlab.errors import ConfigError
from alignlab.run import _root_cause, build, train
from tests.hydra_app import FAST, compose_config

QUICK = ["model=tiny", "reward=jpeg_compressibility", "logger=none", "sampler.num_steps=4", "sampler.progress=false",
         "trainer.enable_progress_bar=false"]


def test_asyndm_evaluation_writes_its_table_grids_and_maps(tmp_path):
    cfg = compose_config(tmp_path, ["method=asyndm", "prompts=asyn_animals", *QUICK, "method.num_prompts=3",
                                    "method.images_per_prompt=2",
                                    "method.batch_size=4", "method.mask_steps=2"])
    assert cfg.sampler._target_.endswith("AsynSampler") and cfg.prompts.name == "asyn_animals"
    value = train(cfg)
    out = tmp_path / "asyndm"
    table = json.loads((out / "table.json").read_text())
    assert table["images"] == 6 and [row["prompt"] for row in table["per_image"]][:3] == [
        "a cat eating a sandwich", "a cat eating a sandwich", "a dog playing basketball"]
    assert list(table["variants"]) == ["dm", "dm_concave", "asyndm"]
    dm, asyndm = table["variants"]["dm"], table["variants"]["asyndm"]
    assert dm["delta_vs_dm"] == 0 and dm["win_rate_vs_dm"] == 0 and asyndm["reward_mean"] < 0
    assert value == pytest.approx(asyndm["reward_mean"])
    assert "| asyndm |" in (out / "table.md").read_text()
    caption = 2 * 14 + 6  # the longest caption ("dm <reward>: <prompt>") wraps to two 14 px lines, + padding
    assert Image.open(out / "triplets.png").size == (3 * 128, 6 * (128 + caption))  # DM | DM_concave | AsynDM
    assert Image.open(out / "timestep_maps.png").size[0] == 3 * 128  # image + 2 steps
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "lora").exists()  # nothing trained


def test_asyndm_variants_share_each_images_noise(tmp_path):
    cfg = compose_config(tmp_path, ["method=asyndm", *QUICK, "method.images_per_prompt=2", "method.batch_size=4"])
    method, _ = build(cfg, tmp_path)
    runs = method.generate(0)
    first = runs["dm"].latents[:, 0]
    assert torch.equal(first, runs["dm_concave"].latents[:, 0]) and torch.equal(first, runs["asyndm"].latents[:, 0])
    assert not torch.equal(first[0], first[1])  # two images of one prompt: different noise
    assert torch.equal(method.generate(1)["asyndm"].latents[0, 0], first[1])  # a row's noise is its own


@pytest.mark.parametrize("overrides,message", [
    (["prompts=simple"], "needs prompts with item words"),
    (["sampler=ddim"], "needs the asynchronous sampler"),
    (["sampler.curve=cubic"], "sampler.curve"),
])
def test_asyndm_bad_settings_are_clear_errors(tmp_path, overrides, message):
    cfg = compose_config(tmp_path, ["method=asyndm", *QUICK, *overrides])
    with pytest.raises(Exception) as info:
        build(cfg, tmp_path)
    cause = _root_cause(info.value)
    assert isinstance(cause, ConfigError) and message in str(cause)


def test_ddpo_trains_with_the_asynchronous_sampler(tmp_path):
    overrides = [*FAST, "sampler=asyn", "prompts=asyn_animals", "logger=none"]
    train(compose_config(tmp_path / "run", [*overrides, "trainer.max_epochs=2"]))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1]
    for row in rows:
        for key in ("reward_mean", "loss", "approx_kl", "clipfrac", "grad_norm"):
            assert row[key] == row[key], key  # present and not NaN
        assert row["approx_kl"] < 1e-3  # the first inner epoch re-scores its own samples: ratios ~ 1
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    method, _ = build(compose_config(tmp_path / "check", overrides), tmp_path / "check")
    method.start_round()
    timesteps = method.buffer["traj"].timesteps
    assert timesteps.shape == (4, 3, 16, 16) and len(timesteps[:, 1].unique()) > 1  # per-pixel maps stored


def test_asyndm_paper_preset(tmp_path):
    cfg = compose_config(tmp_path, ["experiment=asyndm_paper"])
    assert cfg.model.pretrained == "stabilityai/stable-diffusion-2-1-base" and cfg.model.resolution == 512
    sampler = cfg.sampler
    assert (sampler.num_steps, sampler.eta, sampler.guidance_scale) == (50, 1.0, 5.0)
    assert (sampler.curve, sampler.mask_mode, sampler.mask_threshold, sampler.capture_downscale) == ("bin", "dynamic",
                                                                                                      1.0, 4)
    assert cfg.method._target_.endswith("AsynDM") and cfg.reward._target_.endswith("ClipScore")
    entries = cfg.prompts.train
    assert len(entries) == 40 and all(len(e["items"]) == 2 for e in entries)
    assert {item["k"] for e in entries for item in e["items"]} == {0.3, 0.5, 0.7}  # the official per-item k


def test_asyndm_on_world_prompts_judges_every_variant_with_the_oracle(tmp_path):
    """With the oracle as the reward, the oracle columns must repeat the reward columns exactly."""
    cfg = compose_config(tmp_path, ["method=asyndm", "reward=oracle", "logger=none", "sampler.num_steps=4",
                                    "sampler.progress=false", "trainer.enable_progress_bar=false", "method.split=test",
                                    "prompts.per_category=1", "method.images_per_prompt=2", "method.batch_size=4"])
    train(cfg)
    table = json.loads((tmp_path / "asyndm" / "table.json").read_text())
    assert table["images"] == 4
    for variant, row in table["variants"].items():
        scores = [image["oracle"][variant] for image in table["per_image"]]
        assert scores == [image[variant] for image in table["per_image"]]
        assert row["oracle_score"] == pytest.approx(row["reward_mean"])
        assert row["oracle_accuracy"] == sum(image["passed"][variant] for image in table["per_image"]) / 4
        assert all(image["passed"][variant] == (image[variant] == 1.0) for image in table["per_image"])
    assert "oracle accuracy |" in (tmp_path / "asyndm" / "table.md").read_text()
