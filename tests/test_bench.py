"""The benchmarks' model contract: every figure in docs/benchmarks.md divides by a UNet call on the latents
`bench_model` describes, so those must be the model's own latents and text width, with LoRA attached."""

import pytest
import torch

from alignlab.bench import bench_model
from alignlab.models import build_tiny
from alignlab.world import build_world


@pytest.mark.parametrize("name, build", [("world", build_world), ("tiny", build_tiny)])
def test_bench_model_describes_the_models_own_latents(name, build):
    unet, scheduler, width, shape = bench_model(name, latent=16)
    model = build()
    assert tuple(shape) == model.latent_shape(1)[1:]
    assert width == model.text_encoder.config.hidden_size
    assert type(scheduler) is type(model.scheduler)
    assert any("lora" in n for n, p in unet.named_parameters() if p.requires_grad)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        out = unet(x, torch.tensor(500), encoder_hidden_states=torch.randn(2, 77, width)).sample
    assert out.shape == x.shape
