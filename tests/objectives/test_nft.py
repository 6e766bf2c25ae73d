"""DiffusionNFT: the optimality mapping, the implicit policies' special cases and the adaptive loss by hand, and
one update's direction on the tiny model: a good sample (r = 1) is reconstructed better after it, a bad one
(r = 0) worse."""

import pytest
import torch

from alignlab.core.ddim import alphas_at, broadcast_timestep, x0_and_eps
from alignlab.errors import ConfigError
from alignlab.models import trainable_parameters
from alignlab.objectives import DiffusionNFT
from alignlab.objectives.nft import adaptive_error, implicit_policies, nft_loss, optimality
from alignlab.samplers.ddim import guided_noise


def test_optimality_maps_clipped_advantages_to_probabilities():
    r = optimality(torch.tensor([-10.0, -5.0, 0.0, 2.5, 5.0, 8.0]), 5.0)
    torch.testing.assert_close(r, torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0, 1.0]))


def test_implicit_policies_special_cases():
    generator = torch.Generator().manual_seed(0)
    current, old = torch.randn(3, 4, generator=generator), torch.randn(3, 4, generator=generator)
    positive, negative = implicit_policies(old, old, 0.3)  # at the round's start θ = old: both are old
    torch.testing.assert_close(positive, old)
    torch.testing.assert_close(negative, old)
    positive, negative = implicit_policies(current, old, 1.0)  # β = 1: the current policy and its mirror in old
    torch.testing.assert_close(positive, current)
    torch.testing.assert_close(negative, 2 * old - current)
    positive, negative = implicit_policies(current, old, 0.3)  # old lies halfway between them for every β
    torch.testing.assert_close((positive + negative) / 2, old)


def test_the_loss_by_hand():
    x0 = torch.zeros(1, 1, 2, 2)
    # errors 0.5 and 2 everywhere: adaptive errors 0.25 / 0.5 = 0.5 and 4 / 2 = 2
    torch.testing.assert_close(adaptive_error(torch.full_like(x0, 0.5), x0), torch.tensor([0.5]))
    loss = nft_loss(torch.full_like(x0, 0.5), torch.full_like(x0, 2.0), x0, torch.tensor([0.75]), beta=0.5,
                    advantage_limit=5.0)
    torch.testing.assert_close(loss, torch.tensor((0.75 * 0.5 + 0.25 * 2.0) / 0.5 * 5.0))


def reconstruction_error(method, row: int, t: torch.Tensor, noise: torch.Tensor) -> float:
    model, traj = method.model, method.buffer["traj"]
    x0 = traj.final[row : row + 1]
    x_t = model.scheduler.add_noise(x0, noise, t)
    alpha = broadcast_timestep(alphas_at(model.scheduler.alphas_cumprod, t, 1.0), x0)
    with torch.no_grad():
        prediction = guided_noise(model.unet, x_t, t, traj.prompt_embeds[row : row + 1], method.buffer["negative"],
                                  method.train_guidance)
    return float(((x0_and_eps(model.scheduler, prediction, alpha, x_t)[0] - x0) ** 2).mean())


@pytest.mark.parametrize("advantage, better", [(5.0, True), (-5.0, False)])
def test_one_update_reconstructs_good_samples_better_and_bad_ones_worse(stand_in, advantage, better):
    method, model = stand_in, stand_in.model
    objective = DiffusionNFT(kl_weight=0.0)
    method.buffer["advantages"] = torch.tensor([advantage])
    objective.prepare(method)
    noise = torch.randn(1, 1, *model.latent_shape(1)[1:], generator=torch.Generator().manual_seed(3))
    grid, _ = method.sampler.step_grid(model.scheduler)
    batch = {"rows": torch.tensor([0]), "steps": torch.tensor([[1]]), "noise": noise}
    before = reconstruction_error(method, 0, grid[1:2], noise[:, 0])
    optimizer = torch.optim.SGD(trainable_parameters(model), lr=1e-3)
    objective.train(method, batch)
    optimizer.step()
    after = reconstruction_error(method, 0, grid[1:2], noise[:, 0])
    assert (after < before) == better and abs(after - before) > 1e-7
    assert method.stats["old_deviation"] == [0.0]  # the first micro-batch's policy is the sampling policy


def test_the_old_policy_is_held_from_the_rounds_start(stand_in):
    """After an update the objective still compares with the weights the round sampled with, and the current
    weights are left as they are."""
    method, model = stand_in, stand_in.model
    objective = DiffusionNFT(kl_weight=0.0)
    objective.prepare(method)
    with torch.no_grad():
        for param in trainable_parameters(model):
            param.add_(0.01)
    moved = [p.detach().clone() for p in trainable_parameters(model)]
    noise = torch.randn(2, 1, *model.latent_shape(1)[1:], generator=torch.Generator().manual_seed(4))
    objective.train(method, {"rows": torch.tensor([0, 1]), "steps": torch.tensor([[2], [0]]), "noise": noise})
    assert method.stats["old_deviation"][0] > 0
    for param, value in zip(trainable_parameters(model), moved, strict=True):
        assert torch.equal(param.detach(), value)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="method.objective.beta must be > 0"):
        DiffusionNFT(beta=0)
    with pytest.raises(ConfigError, match="method.objective.std must be one of"):
        DiffusionNFT(std="none")
