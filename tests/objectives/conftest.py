"""A stand-in for the method an objective trains through: the attributes the objective contract reads, with
backward passes made directly (no Lightning trainer), on the tiny model with a perturbed LoRA."""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignlab.models import add_lora, trainable_parameters
from alignlab.samplers.ddim import DDIMSampler


@pytest.fixture
def lora_tiny(fresh_tiny):
    """A tiny model whose LoRA has moved away from the pre-trained weights (a zero LoRA makes every KL 0)."""
    add_lora(fresh_tiny, rank=4)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in trainable_parameters(fresh_tiny):
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return fresh_tiny


@pytest.fixture
def stand_in(lora_tiny, embeds):
    """Four sampled rows with advantages, as a round builder leaves them, and a `method` an objective can train."""
    _, cond, neg = embeds
    sampler = DDIMSampler(num_steps=4, guidance_scale=2.0, progress=False)
    with torch.no_grad():
        traj = sampler.sample(lora_tiny.unet, lora_tiny.scheduler, cond, neg, lora_tiny.latent_shape(4),
                              torch.Generator().manual_seed(0))
    return SimpleNamespace(
        model=lora_tiny, sampler=sampler, grad_accum=1, train_guidance=2.0, train_timesteps=2,
        stats=defaultdict(list), manual_backward=lambda loss: loss.backward(),
        buffer={"traj": traj, "negative": neg, "advantages": torch.tensor([1.5, -0.5, 7.0, -2.0])})


def gradients(model) -> list[torch.Tensor]:
    """The trainable parameters' gradients, then cleared."""
    params = trainable_parameters(model)
    grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    for param in params:
        param.grad = None
    return grads
