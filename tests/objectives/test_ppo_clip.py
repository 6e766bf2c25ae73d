"""PPO-clip loss, the per-prompt stat tracker, and one real policy-gradient update."""

import re

import pytest
import torch

from alignlab.core.advantages import PerPromptStatTracker, batch_zscore
from alignlab.objectives.ppo_clip import ppo_clip_loss
from alignlab.samplers.ddim import DDIMSampler
from alignlab.models import add_lora, trainable_parameters


def test_ppo_loss_by_hand():
    logp = torch.tensor([0.0, 0.5, -0.5])
    old = torch.zeros(3)
    adv = torch.tensor([1.0, 2.0, -1.0])
    stats = ppo_clip_loss(logp, old, adv, clip_range=0.2, adv_clip_max=5.0)
    r = torch.exp(logp)
    # sample 1: r = e^0.5 > 1.2, A > 0 -> the clipped term -2 * 1.2 is the max
    # sample 2: r = e^-0.5 < 0.8, A < 0 -> -(-1) * 0.8 = 0.8 vs r = 0.607 -> max is 0.8
    expected = torch.stack([-1.0 * r[0], torch.tensor(-2.0 * 1.2), torch.tensor(0.8)]).mean()
    torch.testing.assert_close(stats.loss, expected)
    torch.testing.assert_close(stats.approx_kl, 0.5 * (logp**2).mean())
    assert stats.clipfrac.item() == pytest.approx(2 / 3)


def test_clipping_bounds_the_ratio_gradient():
    """Outside [1-eps, 1+eps] in the advantage's direction the loss is flat: zero gradient."""
    logp = torch.tensor([0.3, -0.3, 0.05], requires_grad=True)
    stats = ppo_clip_loss(logp, torch.zeros(3), torch.tensor([1.0, -1.0, 1.0]), clip_range=0.1, adv_clip_max=5)
    stats.loss.backward()
    assert logp.grad[0] == 0 and logp.grad[1] == 0 and logp.grad[2] < 0


def test_advantages_are_clipped():
    stats = ppo_clip_loss(torch.zeros(1), torch.zeros(1), torch.tensor([100.0]), 0.1, adv_clip_max=5.0)
    assert stats.loss.item() == pytest.approx(-5.0)


def test_stat_tracker_min_count_fallback_and_window():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=3)
    prompts = ["a", "a", "b", "b"]
    rewards = torch.tensor([1.0, 3.0, 10.0, 14.0])
    adv = tracker.update(prompts, rewards)
    # fewer than min_count values per prompt: whole-batch statistics
    mean, std = rewards.mean(), rewards.std(unbiased=False) + 1e-6
    torch.testing.assert_close(adv, (rewards - mean) / std)
    adv = tracker.update(["a", "a"], torch.tensor([5.0, 7.0]))
    # 'a' now remembers [1, 3, 5, 7] (4 >= 3): its own statistics
    seen = torch.tensor([1.0, 3.0, 5.0, 7.0])
    torch.testing.assert_close(adv, (torch.tensor([5.0, 7.0]) - seen.mean()) / (seen.std(unbiased=False) + 1e-6))
    tracker.update(["a"], torch.tensor([9.0]))
    assert list(tracker.history["a"]) == [3.0, 5.0, 7.0, 9.0]  # bounded window drops the oldest
    restored = PerPromptStatTracker(1, 1)
    restored.load_state_dict(tracker.state_dict())
    assert restored.history == tracker.history and restored.history["a"].maxlen == 4


def test_batch_zscore():
    z = batch_zscore(torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(z.mean(), torch.tensor(0.0))
    torch.testing.assert_close(z.std(unbiased=False), torch.tensor(1.0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_one_update_moves_the_log_prob_with_the_advantage(fresh_tiny, embeds, advantage):
    _, cond, neg = embeds
    add_lora(fresh_tiny, rank=4)
    unet, sched = fresh_tiny.unet, fresh_tiny.scheduler
    sampler = DDIMSampler(num_steps=4, progress=False)
    traj = sampler.sample(unet, sched, cond[:1], neg, fresh_tiny.latent_shape(1), torch.Generator().manual_seed(0))
    step = torch.tensor([2])
    optimizer = torch.optim.SGD(trainable_parameters(fresh_tiny), lr=1e-2)
    logp = sampler.step_log_prob(unet, sched, traj, step, neg)
    torch.testing.assert_close(logp.detach(), traj.log_probs[:, 2])  # on-policy start: ratio 1
    ppo_clip_loss(logp, traj.log_probs[:, 2], torch.tensor([advantage]), 0.1, 5.0).loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = sampler.step_log_prob(unet, sched, traj, step, neg)
    change = (after - traj.log_probs[:, 2]).item()
    assert change * advantage > 1e-6


@pytest.mark.parametrize("window, fraction, trained", [(None, 1.0, 10), ([0, 4], 1.0, 4), ([2, 10], 0.5, 4)])
def test_ddpo_trains_only_the_steps_of_its_window(tiny_model, window, fraction, trained):
    from alignlab.methods.ddpo import DDPO
    from alignlab.prompts import PromptSet
    from alignlab.rewards import JpegCompressibility

    method = DDPO(tiny_model, DDIMSampler(num_steps=10, progress=False), JpegCompressibility(), torch.optim.AdamW,
                  PromptSet(["a cat"]), step_window=window, timestep_fraction=fraction, train_batch_size=4)
    first, end = window or (0, 10)
    steps = torch.cat([batch["steps"] for batch in method.micro_batches(8, torch.Generator().manual_seed(0))])
    assert steps.shape == (8, trained) and steps.min() >= first and steps.max() < end
    assert all(len(set(row.tolist())) == trained for row in steps)  # each sample's steps are distinct


@pytest.mark.parametrize("steps, share, window", [(10, 0.5, (0, 5)), (3, 0.5, (0, 2)), (20, 0.25, (0, 5)),
                                                  (10, 1.0, (0, 10))])
def test_ddpo_early_share_trains_the_first_steps_of_any_sampler(tiny_model, steps, share, window):
    from alignlab.methods.ddpo import DDPO
    from alignlab.prompts import PromptSet
    from alignlab.rewards import JpegCompressibility

    method = DDPO(tiny_model, DDIMSampler(num_steps=steps, progress=False), JpegCompressibility(),
                  torch.optim.AdamW, PromptSet(["a cat"]), early_share=share)
    assert method.trained_interval == window


@pytest.mark.parametrize("options, message", [
    ({"early_share": 0.5, "step_window": [0, 2]}, "set one"), ({"early_share": 0.0}, "must be in (0, 1]"),
    ({"early_share": 1.5}, "must be in (0, 1]")])
def test_ddpo_early_share_refuses_bad_values(tiny_model, options, message):
    from alignlab.errors import ConfigError
    from alignlab.methods.ddpo import DDPO
    from alignlab.prompts import PromptSet
    from alignlab.rewards import JpegCompressibility

    with pytest.raises(ConfigError, match=re.escape(message)):
        DDPO(tiny_model, DDIMSampler(num_steps=4, progress=False), JpegCompressibility(), torch.optim.AdamW,
             PromptSet(["a cat"]), **options)


def test_a_rounds_row_totals_its_times_and_averages_the_rest(tiny_model):
    from alignlab.methods.ddpo import DDPO
    from alignlab.prompts import PromptSet
    from alignlab.rewards import JpegCompressibility

    method = DDPO(tiny_model, DDIMSampler(num_steps=4, progress=False), JpegCompressibility(), torch.optim.AdamW,
                  PromptSet(["a cat"]))
    for seconds, loss in [(1.5, 0.2), (2.0, 0.4), (0.5, 0.9)]:  # three micro-batches
        method.stats["time_update"].append(seconds)
        method.stats["loss"].append(loss)
    assert method.finish_round() == {"round": 0, "time_update": 4.0, "loss": pytest.approx(0.5)}
    assert method.finish_round() == {"round": 1}
