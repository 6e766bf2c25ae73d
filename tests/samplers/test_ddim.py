"""The DDIM sampler (alignlab/samplers/ddim.py): a stored trajectory re-scores exactly, sampling is seeded and
windows compose (shared-prefix branching rests on it)."""

import math

import torch

from alignlab.samplers.ddim import DDIMSampler


def test_rescoring_a_stored_step_is_exact(tiny_model, embeds):
    _, cond, neg = embeds
    sampler = DDIMSampler(num_steps=4, guidance_scale=5.0, progress=False)
    traj = sampler.sample(tiny_model.unet, tiny_model.scheduler, cond, neg, tiny_model.latent_shape(4),
                          torch.Generator().manual_seed(0))
    assert traj.latents.shape == (4, 5, 4, 16, 16) and traj.log_probs.shape == (4, 4)
    assert torch.equal(traj.timesteps[0], torch.tensor([751, 501, 251, 1]))
    with torch.no_grad():
        for j in range(4):
            step = torch.full((4,), j)
            rescored = sampler.step_log_prob(tiny_model.unet, tiny_model.scheduler, traj, step, neg)
            assert torch.equal(rescored, traj.log_probs[:, j])
        # a different step for each sample (DDPO's shuffled timesteps) re-scores exactly too
        mixed = torch.tensor([3, 0, 2, 1])
        rescored = sampler.step_log_prob(tiny_model.unet, tiny_model.scheduler, traj, mixed, neg)
        assert torch.equal(rescored, traj.log_probs[torch.arange(4), mixed])


def test_sampling_is_seeded_and_windows_compose(tiny_model, embeds):
    """denoise(0, k) then denoise(k, n) equals one full run: the basis of shared-prefix branching."""
    _, cond, neg = embeds
    unet, sched = tiny_model.unet, tiny_model.scheduler
    sampler = DDIMSampler(num_steps=4, progress=False)
    shape = tiny_model.latent_shape(4)
    with torch.no_grad():
        full = sampler.sample(unet, sched, cond, neg, shape, torch.Generator().manual_seed(5))
        again = sampler.sample(unet, sched, cond, neg, shape, torch.Generator().manual_seed(5))
        gen = torch.Generator().manual_seed(5)
        start = torch.randn(shape, generator=gen)
        head = sampler.denoise(unet, sched, start, cond, neg, gen, 0, 2)
        tail = sampler.denoise(unet, sched, head.final, cond, neg, gen, 2, 4)
    assert torch.equal(full.latents, again.latents)
    assert torch.equal(torch.cat([head.latents, tail.latents[:, 1:]], 1), full.latents)
    assert torch.equal(torch.cat([head.log_probs, tail.log_probs], 1), full.log_probs)
    assert not math.isclose(full.final[0].std().item(), full.final[1].std().item(), rel_tol=1e-9)
