"""The DDIM step with log-prob (alignlab/core/ddim.py) against diffusers and closed forms."""


import pytest
import torch
from diffusers import DDIMScheduler

from alignlab.core.ddim import ddim_step
from alignlab.models.tiny import sd_scheduler


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_step_matches_diffusers(prediction_type):
    scheduler = sd_scheduler(prediction_type)
    scheduler.set_timesteps(20)
    gen = torch.Generator().manual_seed(0)
    x, out, noise = (torch.randn(2, 4, 8, 8, generator=gen) for _ in range(3))
    for t in scheduler.timesteps[[0, 7, -1]]:
        ours = ddim_step(scheduler, out, t, t - 50, x, eta=1.0, noise=noise).prev_sample
        theirs = DDIMScheduler.step(scheduler, out, t, x, eta=1.0, variance_noise=noise).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_log_prob_is_mean_gaussian_density():
    scheduler = sd_scheduler()
    gen = torch.Generator().manual_seed(1)
    x, out, prev = (torch.randn(3, 4, 8, 8, generator=gen) for _ in range(3))
    t, t_prev = 601, 551
    result = ddim_step(scheduler, out, t, t_prev, x, eta=1.0, prev_sample=prev)
    # independent computation: DDIM posterior mean / std from the paper's formulas
    a_t, a_p = scheduler.alphas_cumprod[t].double(), scheduler.alphas_cumprod[t_prev].double()
    x0 = (x.double() - (1 - a_t).sqrt() * out.double()) / a_t.sqrt()
    sigma = ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)).sqrt()
    mean = a_p.sqrt() * x0 + (1 - a_p - sigma**2).sqrt() * out.double()
    expected = torch.distributions.Normal(mean, sigma).log_prob(prev.double()).mean(dim=(1, 2, 3))
    torch.testing.assert_close(result.log_prob.double(), expected, rtol=1e-5, atol=1e-5)
    assert result.std.item() == pytest.approx(sigma.item(), rel=1e-5)
    # the mean over dims (not the sum): a sum would be 256 times larger
    assert abs(result.log_prob[0].item()) < 10


def test_final_step_uses_scheduler_final_alpha():
    scheduler = sd_scheduler()  # set_alpha_to_one=False: final alpha = alphas_cumprod[0]
    x = torch.randn(1, 4, 4, 4)
    result = ddim_step(scheduler, torch.zeros_like(x), 1, -49, x, eta=1.0, noise=torch.zeros_like(x))
    a_t, a_final = scheduler.alphas_cumprod[1], scheduler.alphas_cumprod[0]
    sigma = ((1 - a_final) / (1 - a_t) * (1 - a_t / a_final)).sqrt()
    expected = a_final.sqrt() * x / a_t.sqrt()  # eps = 0: x0 = x / sqrt(a_t); no direction term
    torch.testing.assert_close(result.prev_sample, expected, rtol=1e-5, atol=1e-6)
    assert result.std.item() == pytest.approx(sigma.item(), rel=1e-5)


def test_zero_sigma_is_a_clear_error():
    x = torch.randn(1, 4, 4, 4)
    with pytest.raises(ValueError, match="eta must be > 0"):
        ddim_step(sd_scheduler(), x, 501, 451, x, eta=0.0)
    one = sd_scheduler()
    one.register_to_config(set_alpha_to_one=True)
    one.final_alpha_cumprod = torch.tensor(1.0)
    with pytest.raises(ValueError, match="sigma = 0"):
        ddim_step(one, x, 1, -49, x, eta=1.0)


def test_per_pixel_and_per_sample_timesteps_match_scalar():
    scheduler = sd_scheduler()
    gen = torch.Generator().manual_seed(2)
    x, out, noise = (torch.randn(2, 4, 6, 6, generator=gen) for _ in range(3))
    scalar = ddim_step(scheduler, out, 401, 351, x, noise=noise)
    per_sample = ddim_step(scheduler, out, torch.tensor([401, 401]), torch.tensor([351, 351]), x, noise=noise)
    per_pixel = ddim_step(scheduler, out, torch.full((2, 6, 6), 401), torch.full((2, 6, 6), 351), x, noise=noise)
    for other in (per_sample, per_pixel):
        assert torch.equal(other.prev_sample, scalar.prev_sample)
        assert torch.equal(other.log_prob, scalar.log_prob)
