"""model.gradient_checkpointing and model.compile change speed and memory, never the numbers."""

import pytest
import torch

from alignlab.samplers.asyn import AsynSampler
from alignlab.core.per_pixel_unet import PerPixelUNet
from alignlab.samplers.ddim import DDIMSampler
from alignlab.core.token_spans import Item, ItemBatch
from alignlab.errors import ConfigError
from alignlab.models import add_lora, build_tiny
from alignlab.models.speed import configure_speed
from tests.hydra_app import comparable, run_inprocess, same_lora


def lora_tiny():
    torch.manual_seed(0)
    model = build_tiny()
    add_lora(model)
    return model


def lora_grads(unet, sample, timestep, cond):
    """The LoRA gradients of one training-mode UNet call (per-pixel when `timestep` is a map)."""
    unet.train()
    unet.zero_grad(set_to_none=True)
    PerPixelUNet(unet)(sample, timestep, encoder_hidden_states=cond).sample.square().mean().backward()
    return [p.grad.clone() for p in unet.parameters() if p.requires_grad]


def test_checkpointed_gradients_equal_plain_ones_with_per_pixel_timesteps():
    """The per-pixel time term is a hook gone before the backward pass; the recomputation must still see it."""
    model = lora_tiny()
    unet, shape = model.unet, model.latent_shape(2)
    gen = torch.Generator().manual_seed(0)
    x, cond = torch.randn(shape, generator=gen), torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen)
    timestep_map = torch.full((2, *shape[-2:]), 500)
    timestep_map[:, : shape[-2] // 2] = 300
    plain = {name: lora_grads(unet, x, t, cond) for name, t in (("map", timestep_map), ("scalar", torch.tensor(500)))}
    unet.enable_gradient_checkpointing()  # diffusers' own: recomputes without the hooks
    lost = lora_grads(unet, x, timestep_map, cond)
    assert not all(torch.equal(a, b) for a, b in zip(lost, plain["map"], strict=True))  # the hazard is real
    configure_speed(unet, gradient_checkpointing=True)
    for name, t in (("map", timestep_map), ("scalar", torch.tensor(500))):
        kept = lora_grads(unet, x, t, cond)
        assert all(torch.equal(a, b) for a, b in zip(kept, plain[name], strict=True)), name


def test_a_checkpointed_asynchronous_ddpo_round_equals_the_plain_one(tmp_path):
    run = ["trainer.max_epochs=1", "logger=none", "sampler=asyn", "prompts=asyn_animals"]
    plain = run_inprocess(tmp_path / "plain", *run)
    checkpointed = run_inprocess(tmp_path / "checkpointed", *run, "model.gradient_checkpointing=true")
    assert comparable(checkpointed) == comparable(plain) and plain[0]["grad_norm"] > 0
    assert same_lora(tmp_path / "plain", tmp_path / "checkpointed")


def rollouts(model):
    """A synchronous and an asynchronous rollout, and one step's log-prob gradient, from fixed seeds."""
    prompts = ["a cat eating a sandwich", "a dog"]
    cond, neg = model.encode_prompts(prompts), model.encode_prompts([""])
    items = ItemBatch.build(model.tokenizer, prompts, [[Item("cat", k=0.5)], [Item("dog", k=0.5)]])
    sync = DDIMSampler(num_steps=3, progress=False)
    out = {"sync": sync.sample(model.unet, model.scheduler, cond, neg, model.latent_shape(2),
                               torch.Generator().manual_seed(1)).final}
    asyn = AsynSampler(num_steps=3, progress=False)
    traj = asyn.sample(model.unet, model.scheduler, cond, neg, model.latent_shape(2), torch.Generator().manual_seed(1),
                       items)
    out["asyn"] = traj.final
    asyn.step_log_prob(model.unet, model.scheduler, traj, torch.ones(2, dtype=torch.long), neg).sum().backward()
    out["grads"] = torch.cat([p.grad.flatten() for p in model.unet.parameters() if p.requires_grad])
    return out


def test_a_compiled_unet_samples_and_rescores_as_the_eager_one():
    """Traced by dynamo (aot_eager: no code generation, so the check is fast): the alignlab hooks that come
    and go between calls must be traced in, not frozen into the first graph, checkpointed or not."""
    eager = rollouts(lora_tiny())
    for checkpointing in (False, True):
        torch._dynamo.reset()  # one compiled UNet per process, as in a run: the two must not share dynamo's caches
        model = lora_tiny()
        keys = list(model.unet.state_dict())
        configure_speed(model.unet, gradient_checkpointing=checkpointing, compile="aot_eager")
        compiled = rollouts(model)
        assert list(model.unet.state_dict()) == keys  # checkpoints and LoRA exports keep their keys
        for name in ("sync", "asyn", "grads"):
            torch.testing.assert_close(compiled[name], eager[name], rtol=1e-5, atol=1e-6,
                                       msg=f"{name}, checkpointing {checkpointing}")
    assert not torch.equal(eager["sync"], eager["asyn"])  # so matching "asyn" needs the per-pixel hooks traced in


def test_an_unknown_compile_backend_is_one_sentence():
    with pytest.raises(ConfigError, match="model.compile must be false, true or a torch.compile backend .*inductor"):
        configure_speed(lora_tiny().unet, compile="fastest")


@pytest.mark.slow
def test_the_inductor_compiled_unet_samples_as_the_eager_one():
    """model.compile=true: inductor's generated code (over a minute to compile on 2 CPU cores)."""
    eager = rollouts(lora_tiny())
    model = lora_tiny()
    configure_speed(model.unet, compile=True)
    compiled = rollouts(model)
    for name in ("sync", "asyn", "grads"):
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-3, atol=1e-4, msg=name)
