"""The shapes world: grammar splits, the exact Haar latent, hard negatives, resumable pre-training,
the shipped weights (deterministic, loadable through SD's and open_clip's paths) and the quality gates."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import alignlab.world.pretraining as pretraining
from alignlab.samplers.ddim import DDIMSampler
from alignlab.errors import ConfigError
from alignlab.eval.evaluate import evaluate_prompts
from alignlab.world.clip import CHECKPOINT, NAME, hard_negative
from alignlab.world.grammar import (
    CATEGORIES, HELD_OUT_BINDINGS, HELD_OUT_SHAPE_ORDERS, all_specs, spec_of, world_prompt_set,
)
from alignlab.world.latent import HaarAutoencoder
from alignlab.world.model import build_world
from alignlab.world.oracle import OracleReward, check
from alignlab.world.render import render_batch
from alignlab.world.t2i_training import T2I, T2I_RELATIONS, Phase, train_t2i, train_world_t2i
from alignlab.world.text_training import TEXT
from tests.hydra_app import compose_config


def _bindings(spec):
    return {(o.color, o.shape) for o in spec.objects}


def test_grammar_sizes_and_held_out_combinations_never_reach_train():
    specs = all_specs()
    assert [sum(s.category == c for s in specs) for c in CATEGORIES] == [18, 6, 36, 180, 720]
    train, test = [s for s in specs if s.split == "train"], [s for s in specs if s.split == "test"]
    assert not {s.prompt for s in train} & {s.prompt for s in test}
    assert not set().union(*map(_bindings, train)) & HELD_OUT_BINDINGS
    assert HELD_OUT_BINDINGS <= set().union(*map(_bindings, test))
    two = [tuple(o.shape for o in s.objects) for s in train if s.category == "two_objects"]
    assert two and not set(two) & HELD_OUT_SHAPE_ORDERS
    assert all(spec_of(s.prompt) == s for s in specs)
    assert spec_of("an orange triangle below a purple square").relation == "below"


def test_world_prompt_set_carries_items_and_keeps_splits_apart():
    prompts = world_prompt_set(["counting", "position"], per_category=5)
    assert len(prompts.train) == len(prompts.test) == 10 and not set(prompts.train) & set(prompts.test)
    assert prompts.train[0] == "two red circles"
    items = prompts.items_for("two red circles")
    assert [(i.word, i.k, i.threshold) for i in items] == [("circles", 0.5, 0.015)]
    assert all(spec_of(p).split == "test" for p in prompts.test)


def test_world_prompt_set_subset_keeps_only_its_prompts_each_in_the_grammars_split():
    subset = ["a red circle to the left of a yellow triangle", "a red circle and a green triangle", "two red circles",
              "a red circle to the left of a green triangle"]
    prompts = world_prompt_set(["colour_attr", "position"], per_category=2, subset=subset)
    assert prompts.train == ["a red circle and a green triangle", "a red circle to the left of a green triangle"]
    assert prompts.test == ["a red circle to the left of a yellow triangle"]  # yellow triangle: a held-out binding
    with pytest.raises(ConfigError, match="not in it: \\['a red circle left of a square'\\]"):
        world_prompt_set(subset=["a red circle", "a red circle left of a square"])


def test_world_prompt_set_k_overrides_every_items_curvature():
    prompts = world_prompt_set(["single_object", "position"], per_category=2, k=0.3)
    assert {i.k for p in prompts.train + prompts.test for i in prompts.items_for(p)} == {0.3}
    assert {i.k for i in world_prompt_set(["single_object"], per_category=1).items_for("a red circle")} == {0.7}
    with pytest.raises(ConfigError, match="prompts.k must be in"):
        world_prompt_set(k=1.0)


def test_world_prompt_set_threshold_overrides_every_items_mask_threshold():
    prompts = world_prompt_set(["counting", "position"], per_category=2, threshold=0.05)
    items = [i for p in prompts.train + prompts.test for i in prompts.items_for(p)]
    assert {i.threshold for i in items} == {0.05} and {i.k for i in items} == {0.5}  # k untouched
    with pytest.raises(ConfigError, match="prompts.threshold must be in"):
        world_prompt_set(threshold=0.0)


def test_haar_latent_is_exact_orthonormal_and_zero_on_background():
    vae = HaarAutoencoder()
    images = render_batch(all_specs()[::50], np.random.default_rng(0)) * 2 - 1
    latents = vae.encode(images).latent_dist.sample()
    assert latents.shape == (len(images), 12, 16, 16)
    torch.testing.assert_close(vae.decode(latents).sample, images, atol=1e-6, rtol=0)
    torch.testing.assert_close(latents.norm(), (images - 1).norm(), rtol=1e-5, atol=0)  # orthonormal
    white = vae.encode(torch.ones(1, 3, 32, 32)).latent_dist.sample()
    assert white.abs().max() == 0


def test_hard_negatives_are_other_grammatical_prompts():
    rng = np.random.default_rng(0)
    for spec in all_specs()[::7]:
        negative = hard_negative(spec, rng)
        assert negative != spec and spec_of(negative.prompt) == negative
        assert not check(negative, render_batch([spec], np.random.default_rng(1))[0]).passed


def test_pretraining_resumes_exactly(tmp_path, monkeypatch):
    """Every phase of the real pre-training recipe (both stages), interrupted in the last phase and resumed, gives
    bit-identical weights to an uninterrupted run."""
    def tiny(phases):
        return tuple(replace(phase, loop=replace(phase.loop, steps=3, batch_size=4, warmup=1, save_every=2))
                     for phase in phases)

    recipe = dict(first=tiny(T2I), then=tiny(T2I_RELATIONS), text=replace(TEXT, steps=2, batch_size=4, warmup=1))
    straight = load_file(train_world_t2i(tmp_path / "a", **recipe) / "unet.safetensors")

    real = pretraining.step_generators

    def interrupt(seed, stage, step):
        if (stage, step) == (T2I_RELATIONS[-1].stage, 2):
            raise KeyboardInterrupt
        return real(seed, stage, step)

    monkeypatch.setattr(pretraining, "step_generators", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_world_t2i(tmp_path / "b", **recipe)
    monkeypatch.setattr(pretraining, "step_generators", real)
    resumed_dir = train_world_t2i(tmp_path / "b", **recipe)
    resumed = load_file(resumed_dir / "unet.safetensors")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    model = build_world(str(resumed_dir))  # the smoke run's weights load through the shipped path
    assert model.latent_shape(2) == (2, 12, 16, 16)


@pytest.fixture(scope="module")
def world():
    return build_world()


def test_shipped_model_is_deterministic(world):
    sampler = DDIMSampler(num_steps=4, progress=False)
    prompts = ["a red circle", "a blue square to the left of a yellow triangle"]
    first = evaluate_prompts(world, sampler, OracleReward(), prompts, samples_per_prompt=2, seed=3)
    again = evaluate_prompts(world, sampler, OracleReward(), prompts, samples_per_prompt=2, seed=3)
    assert torch.equal(first["images"], again["images"])
    # golden values of the shipped weights (change only with new weights, by `make world`)
    assert first["images"].mean().item() == pytest.approx(0.971911, abs=1e-4)
    assert first["rewards"] == [0.0, 0.5, 0.25, 0.25]  # oracle at 4 steps: 0, 1 of 2, 1 of 4 constraints twice


def test_shipped_model_passes_the_single_object_gate(world):
    """docs/world.md's gate: single objects of the TEST split drawn right >= 80% of the time."""
    prompts = [s.prompt for s in all_specs(["single_object"]) if s.split == "test"]
    sampler = DDIMSampler(num_steps=10, guidance_scale=3.0, progress=False)
    out = evaluate_prompts(world, sampler, OracleReward(), prompts, samples_per_prompt=8, batch_size=48)
    passed = [check(spec_of(p), image).passed for p, image in zip(out["prompts"], out["images"], strict=True)]
    assert np.mean(passed) >= 0.8


def test_world_clip_loads_through_open_clip_and_prefers_true_captions():
    from alignlab.rewards.clip import ClipScore

    reward = ClipScore(NAME, str(CHECKPOINT))
    rng = np.random.default_rng(0)
    specs = [s for s in all_specs() if s.split == "test"][::16]
    images = render_batch(specs, rng)
    own = reward(images, [s.prompt for s in specs])
    swapped = reward(images, [hard_negative(s, rng).prompt for s in specs])
    assert (own > swapped).float().mean() >= 0.8


def test_world_is_the_default_and_clip_follows_the_model(tmp_path):
    cfg = compose_config(tmp_path)
    assert cfg.model._target_ == "alignlab.world.build_world" and cfg.prompts.name == "world"
    assert (cfg.reward.model_name, cfg.reward.pretrained) == (NAME, str(CHECKPOINT))
    sd = compose_config(tmp_path, ["model=sd15"])
    assert (sd.reward.model_name, sd.reward.pretrained) == ("ViT-H-14", "laion2b_s32b_b79k")


def test_world_clip_pretraining_runs_and_its_weights_load(tmp_path):
    """The real CLIP training path, both phases for two steps each: weights change and load through open_clip."""
    from alignlab.rewards.clip import ClipScore, OpenClip
    from alignlab.world.clip import CLIP, CLIP_PHASES, train_clip

    tiny = dict(steps=2, batch_size=4, warmup=1, save_every=1)
    path = train_clip(tmp_path, tuple((stage, replace(config, **tiny)) for stage, config in CLIP_PHASES))
    assert {p.name for p in tmp_path.glob("*.ckpt")} == {"clip.ckpt", "clip_relations.ckpt"}
    torch.manual_seed(CLIP.seed)
    initial = OpenClip(NAME, None, torch.device("cpu")).model.state_dict()
    trained = load_file(path)
    assert any(not torch.allclose(initial[k].half(), trained[k]) for k in trained)
    scores = ClipScore(NAME, str(path))(render_batch(all_specs()[:2], np.random.default_rng(0)), ["a red circle"] * 2)
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_world_clip_training_continues_from_a_checkpoint(tmp_path):
    """`start` (world_probe clip-more): at learning rate 0 a continued CLIP ends where it started, the shipped
    weights exactly (they are stored in fp16), where a fresh one would end at its random initialisation."""
    from alignlab.world.clip import CLIP_RELATIONS, train_clip

    still = replace(CLIP_RELATIONS, steps=1, batch_size=4, warmup=1, lr=0.0)
    path = train_clip(tmp_path, (("clip_more", still),), start=CHECKPOINT)
    shipped, continued = load_file(CHECKPOINT), load_file(path)
    assert shipped.keys() == continued.keys() and all(torch.equal(shipped[k], continued[k]) for k in shipped)


def test_world_unet_training_continues_from_the_shipped_weights(tmp_path):
    """`start` (world_probe unet-more): at learning rate 0 the continued UNet ends at the shipped weights exactly
    and the text encoder is theirs, not retrained; at a learning rate it moves."""
    from alignlab.world.model import WEIGHTS

    still = pretraining.LoopConfig(steps=1, lr=0.0, warmup=1, ema_decay=0.995, batch_size=4)
    path = train_t2i(tmp_path / "still", (Phase("more", still),), start=WEIGHTS)
    for name in ("unet", "text_encoder"):
        shipped, continued = load_file(WEIGHTS / f"{name}.safetensors"), load_file(path / f"{name}.safetensors")
        assert shipped.keys() == continued.keys() and all(torch.equal(shipped[k], continued[k]) for k in shipped)
    only_position = {category: float(category == "position") for category in pretraining.CATEGORY_WEIGHTS}
    moved = train_t2i(tmp_path / "moved", (Phase("more", replace(still, steps=2, lr=1e-3), {}, only_position),),
                      start=WEIGHTS)
    shipped, trained = load_file(WEIGHTS / "unet.safetensors"), load_file(moved / "unet.safetensors")
    assert any(not torch.equal(shipped[k], trained[k]) for k in shipped)


def test_make_world_builds_installs_and_a_rerun_skips_finished_stages(tmp_path, monkeypatch):
    """`python -m alignlab.world.build --install` (= make world) at a tiny size: the CLIP and the text-to-image
    stages write their weights, the last stage's directory holds the whole world (its UNet, text encoder and the
    CLIP), --install copies exactly those four files into the package's weights folder, and a rerun finds every
    stage finished: no step trained again, the same bytes everywhere."""
    from functools import partial

    import alignlab.world.build as build
    from alignlab.world.report import unet_loss_logs
    from alignlab.world.clip import CLIP_PHASES, train_clip

    tiny = dict(batch_size=4, warmup=1, save_every=1)
    clip_phases = tuple((stage, replace(config, steps=2, **tiny)) for stage, config in CLIP_PHASES)
    monkeypatch.setattr(build, "train_clip", partial(train_clip, phases=clip_phases))
    first, then = (tuple(replace(phase, loop=replace(phase.loop, steps=2, **tiny)) for phase in phases)
                   for phases in (T2I, T2I_RELATIONS))
    monkeypatch.setattr(build, "train_world_t2i", partial(train_world_t2i, first=first, then=then,
                                                          text=replace(TEXT, steps=2, **tiny)))
    monkeypatch.setattr(build, "WEIGHTS", tmp_path / "installed")
    out = tmp_path / "build"
    build.main(["--out", str(out), "--install", "--skip-report"])
    installed = {p.name: p.read_bytes() for p in (tmp_path / "installed").iterdir()}
    assert sorted(installed) == ["text_encoder.safetensors", "unet.json", "unet.safetensors", "world_clip.safetensors"]
    built = {p.name: p.read_bytes() for p in (out / T2I_RELATIONS[-1].stage / "weights").iterdir()}
    assert built == installed
    assert built["world_clip.safetensors"] == (out / "weights" / "world_clip.safetensors").read_bytes()
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {p.name for p in files} >= {"clip_loss.jsonl", "text_loss.jsonl"}
    assert all(log.is_file() for log in unet_loss_logs(out))  # the report plots every UNet phase from there
    monkeypatch.setattr(pretraining, "step_generators", lambda *args: pytest.fail("a finished stage trained again"))
    build.main(["--out", str(out), "--skip-report"])
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
