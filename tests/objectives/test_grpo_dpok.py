"""GRPO's group advantages and the per-step KL GRPO and DPOK add to PPO-clip: hand-computed values, a Monte-Carlo
check of the closed-form KL, and the loss's gradient as the sum of its parts."""

import math

import pytest
import torch

from alignlab.core.advantages import group_zscore
from alignlab.core.ddim import ddim_step
from alignlab.errors import ConfigError
from alignlab.models import frozen_reference
from alignlab.objectives import DPOK, GRPO, PPOClip
from alignlab.objectives.ppo_clip import step_kl
from tests.objectives.conftest import gradients


def test_group_advantages_by_hand():
    groups, rewards = ["a", "a", "b", "b", "b", "c"], torch.tensor([1.0, 3.0, 0.0, 0.0, 3.0, 5.0])
    # round std (population): mean 2, squares 1 + 1 + 4 + 4 + 1 + 9 = 20 over 6
    round_std = math.sqrt(20 / 6)
    expected = torch.tensor([-1.0, 1.0, -1.0, -1.0, 2.0, 0.0]) / (round_std + 1e-4)
    torch.testing.assert_close(group_zscore(groups, rewards), expected)
    # each group's own std: a: 1; b: sqrt(2); c (one sample): 0, so its advantage is 0
    expected = torch.tensor([-1 / (1 + 1e-4), 1 / (1 + 1e-4), -1 / (2**0.5 + 1e-4), -1 / (2**0.5 + 1e-4),
                             2 / (2**0.5 + 1e-4), 0.0])
    torch.testing.assert_close(group_zscore(groups, rewards, "group_std"), expected)


def test_step_kl_matches_a_monte_carlo_estimate(tiny_model):
    """Two model outputs at the same x_t give two Gaussians of one DDIM step; E_policy[log p − log p_ref] over
    samples of the policy's step is the closed form (both per dimension, averaged, as the step log-prob)."""
    scheduler = tiny_model.scheduler
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 4, 4, 4, generator=generator)
    eps, eps_ref = torch.randn(2, 4, 4, 4, generator=generator), torch.randn(2, 4, 4, 4, generator=generator)
    t, t_prev = torch.tensor([500, 700]), torch.tensor([250, 450])
    policy = ddim_step(scheduler, eps, t, t_prev, x_t)
    reference = ddim_step(scheduler, eps_ref, t, t_prev, x_t)
    draws = 4000
    x_prev = policy.mean.repeat(draws, 1, 1, 1) + policy.std.repeat(draws, 1, 1, 1) * torch.randn(
        draws * 2, 4, 4, 4, generator=generator)
    repeat = lambda v: v.repeat(draws, *([1] * (v.ndim - 1))) if v.ndim else v  # noqa: E731
    log_p = ddim_step(scheduler, repeat(eps), repeat(t), repeat(t_prev), repeat(x_t), prev_sample=x_prev).log_prob
    log_q = ddim_step(scheduler, repeat(eps_ref), repeat(t), repeat(t_prev), repeat(x_t), prev_sample=x_prev).log_prob
    monte_carlo = (log_p - log_q).view(draws, 2).mean(dim=0)
    closed = step_kl(policy.mean, reference.mean, policy.std)
    assert bool((closed > 0.1).all())
    torch.testing.assert_close(monte_carlo, closed, rtol=0.03, atol=0)


@pytest.mark.parametrize("objective, weight, kl_weight", [(GRPO(kl_weight=0.5), 1.0, 0.5),
                                                        (DPOK(kl_weight=0.3), 10.0, 0.3)])
def test_the_gradient_is_the_weighted_ppo_clip_plus_the_kl(stand_in, objective, weight, kl_weight):
    """GRPO and DPOK: gradient = α · PPO-clip's (advantages clipped at GRPO's 5, DPOK's not at all) + β · the
    KL's, the KL computed from the policy's and the frozen model's rescored steps."""
    method, model, sampler = stand_in, stand_in.model, stand_in.sampler
    batch = {"rows": torch.arange(4), "steps": torch.tensor([[0, 2], [1, 3], [2, 0], [3, 1]])}
    objective.train(method, batch)
    total = gradients(model)
    limit = objective.advantage_limit  # α scales the clipped advantage
    method.buffer["advantages"] = method.buffer["advantages"].clamp(-limit, limit) * weight
    PPOClip(objective.clip_range, math.inf).train(method, batch)
    policy_part = gradients(model)
    kls = []
    for column in batch["steps"].T:
        step = sampler.rescore(model.unet, model.scheduler, method.buffer["traj"], column, method.buffer["negative"],
                               2.0)
        with torch.no_grad(), frozen_reference(model):
            ref = sampler.rescore(model.unet, model.scheduler, method.buffer["traj"], column,
                                  method.buffer["negative"], 2.0)
        kl = step_kl(step.mean, ref.mean, step.std).mean()
        (kl / 2).backward()  # two trained steps per row: each backward pass is scaled by 1/2
        kls.append(kl.item())
    kl_part = gradients(model)
    assert method.stats["kl_reference"] == pytest.approx(kls)
    assert min(kls) > 0
    for g, p, k in zip(total, policy_part, kl_part, strict=True):
        # float32 sums in a different order: agree to 1e-5 of the gradient's largest entry
        torch.testing.assert_close(g, p + kl_weight * k, rtol=1e-4, atol=1e-5 * g.abs().max().item())


def test_grpo_asks_the_round_builder_for_group_advantages(lora_tiny):
    from alignlab.methods.ddpo import DDPO
    from alignlab.prompts import PromptSet
    from alignlab.rewards import JpegCompressibility
    from alignlab.samplers.ddim import DDIMSampler

    model = lora_tiny
    prompts, rewards = ["a", "b", "a", "b"], torch.tensor([1.0, 2.0, 3.0, 6.0])
    method = DDPO(model, DDIMSampler(num_steps=4, progress=False), JpegCompressibility(), torch.optim.AdamW,
                  PromptSet(["a cat"]), objective=GRPO(std="group_std"))
    torch.testing.assert_close(method.advantages(prompts, rewards), group_zscore(prompts, rewards, "group_std"))
    plain = DDPO(model, DDIMSampler(num_steps=4, progress=False), JpegCompressibility(), torch.optim.AdamW,
                 PromptSet(["a cat"]))
    assert not torch.allclose(plain.advantages(prompts, rewards), method.advantages(prompts, rewards))


@pytest.mark.parametrize("make, message", [
    (lambda: GRPO(std="batch"), "method.objective.std must be one of"),
    (lambda: GRPO(kl_weight=-1), "method.objective.kl_weight must be >= 0"),
    (lambda: DPOK(reward_weight=0), "method.objective.reward_weight must be > 0")])
def test_bad_settings_are_refused(make, message):
    with pytest.raises(ConfigError, match=message):
        make()
