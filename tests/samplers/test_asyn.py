"""The asynchronous sampler (alignlab/samplers/asyn.py): its synchronous variant is DDIM, its trajectories
re-score exactly, variants share noise and differ only in schedules, windows compose, bad settings are refused."""

import pytest
import torch

from alignlab.core.timestep_schedules import Grid, bin_curve
from alignlab.core.token_spans import Item, ItemBatch
from alignlab.errors import ConfigError
from alignlab.samplers.asyn import AsynSampler
from alignlab.samplers.ddim import DDIMSampler
from tests.core.test_asyndm_core import rounded_run

PROMPTS = ["a cat eating a sandwich", "a woolen dog playing basketball", "a cow", "a plain prompt"]
ITEMS = [[Item("cat", 0.7), Item("sandwich", 0.7)], [Item("woolen", 0.3), Item("basketball", 0.5)],
         [Item("cow", 0.5)], []]


@pytest.fixture(scope="module")
def setup(tiny_model):
    embeds, negative = tiny_model.encode_prompts(PROMPTS), tiny_model.encode_prompts([""])
    return tiny_model, embeds, negative, ItemBatch.build(tiny_model.tokenizer, PROMPTS, ITEMS)


def sample(sampler, setup, variant="asyndm", seed=0):
    model, embeds, negative, items = setup
    return sampler.sample(model.unet, model.scheduler, embeds, negative, model.latent_shape(4),
                          torch.Generator().manual_seed(seed), items, variant)


def test_dm_variant_is_the_synchronous_sampler(setup):
    model, embeds, negative, _ = setup
    sync = DDIMSampler(num_steps=10, progress=False).sample(model.unet, model.scheduler, embeds, negative,
                                                             model.latent_shape(4), torch.Generator().manual_seed(0))
    dm = sample(AsynSampler(num_steps=10, progress=False), setup, "dm")
    assert dm.timesteps.shape == (4, 10, 16, 16)
    assert torch.equal(dm.timesteps.amax(dim=(2, 3)), sync.timesteps)
    assert torch.equal(dm.timesteps.amin(dim=(2, 3)), sync.timesteps)
    torch.testing.assert_close(dm.latents, sync.latents, rtol=0, atol=1e-4)
    torch.testing.assert_close(dm.log_probs, sync.log_probs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_asyn_trajectories_rescore_exactly(setup, mode):
    model, _, negative, _ = setup
    sampler = AsynSampler(num_steps=6, progress=False, mask_mode=mode)
    traj = sample(sampler, setup)
    assert traj.timesteps.shape == traj.prev_timesteps.shape == (4, 6, 16, 16)
    assert bool((traj.prev_timesteps < traj.timesteps).all()) and bool((traj.prev_timesteps[:, -1] == 0).all())
    assert len(traj.timesteps[0, 2].unique()) > 1  # item pixels lag the background
    assert len(traj.timesteps[3].flatten(1).unique(dim=1).T) == 1  # no items: synchronous
    with torch.no_grad():
        for j in range(6):
            rescored = sampler.step_log_prob(model.unet, model.scheduler, traj, torch.full((4,), j), negative)
            assert torch.equal(rescored, traj.log_probs[:, j])
        mixed = torch.tensor([5, 0, 3, 1])
        rescored = sampler.step_log_prob(model.unet, model.scheduler, traj, mixed, negative)
    torch.testing.assert_close(rescored, traj.log_probs[torch.arange(4), mixed], rtol=0, atol=1e-5)


def test_variants_share_noise_and_differ_in_schedules(setup):
    sampler = AsynSampler(num_steps=5, progress=False)
    runs = {v: sample(sampler, setup, v) for v in ("dm", "dm_concave", "asyndm")}
    assert torch.equal(runs["dm"].latents[:, 0], runs["asyndm"].latents[:, 0])
    assert torch.equal(runs["dm"].latents[:, 0], runs["dm_concave"].latents[:, 0])
    concave = runs["dm_concave"].timesteps
    assert torch.equal(concave.amax(dim=(2, 3)), concave.amin(dim=(2, 3)))  # every pixel on one curve
    grid = Grid(1000, 5, 1)
    expected = rounded_run(lambda s, r: bin_curve(s, r, 0.7, grid), grid)[:5]  # the prompt's largest k
    assert concave[0, :, 0, 0].tolist() == expected
    assert runs["asyndm"].timesteps[0, 0].unique().tolist() == [expected[0]]  # step 0: the last item's k
    assert not torch.equal(runs["dm"].final, runs["asyndm"].final)


def test_windows_compose_and_per_row_generators(setup):
    model, embeds, negative, items = setup
    sampler = AsynSampler(num_steps=5, progress=False)
    full = sample(sampler, setup)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(model.latent_shape(4), generator=gen)
    state = sampler.initial_state(model.unet, model.scheduler, latents, embeds, negative, gen, items, "asyndm")
    with torch.no_grad():
        head = sampler.denoise(model.unet, model.scheduler, latents, embeds, negative, gen, 0, 2, state=state)
        tail = sampler.denoise(model.unet, model.scheduler, head.final, embeds, negative, gen, 2, 5, state=state)
    assert torch.equal(torch.cat([head.latents, tail.latents[:, 1:]], 1), full.latents)
    assert torch.equal(torch.cat([head.timesteps, tail.timesteps], 1), full.timesteps)
    def rows():
        return [torch.Generator().manual_seed(10 + i) for i in range(4)]

    together = sampler.sample(model.unet, model.scheduler, embeds, negative, model.latent_shape(4), rows(), items)
    alone = sampler.sample(model.unet, model.scheduler, embeds[2:3], negative, model.latent_shape(1), rows()[2:3],
                           items.index(slice(2, 3)))
    assert torch.equal(alone.timesteps, together.timesteps[2:3])  # same masks: a row's result is its own
    torch.testing.assert_close(alone.final, together.final[2:3], rtol=0, atol=1e-3)


def test_sampler_rejects_bad_settings_and_missing_items(setup):
    model, embeds, negative, _ = setup
    for kwargs, key in [({"curve": "cubic"}, "sampler.curve"), ({"mask_mode": "often"}, "sampler.mask_mode"),
                        ({"mask_threshold": 0}, "sampler.mask_threshold"),
                        ({"capture_downscale": 0}, "sampler.capture_downscale"), ({"eta": 0}, "sampler.eta")]:
        with pytest.raises(ConfigError, match=key):
            AsynSampler(**kwargs)
    sampler = AsynSampler(num_steps=3, progress=False)
    with pytest.raises(ConfigError, match="needs item words"):
        sampler.sample(model.unet, model.scheduler, embeds, negative, model.latent_shape(4),
                       torch.Generator().manual_seed(0))
    no_k = ItemBatch.build(model.tokenizer, PROMPTS[:1], [[Item("cat")]])
    with pytest.raises(ConfigError, match="needs a curvature k"):
        sampler.sample(model.unet, model.scheduler, embeds[:1], negative, model.latent_shape(1),
                       torch.Generator().manual_seed(0), no_k)
