"""DPO from self-generated pairs: one update moves the pair's log-ratio; end-to-end rounds."""

import json

import pytest
import torch

from alignlab.objectives.trajectory_dpo import trajectory_dpo_loss
from alignlab.samplers.ddim import DDIMSampler
from alignlab.models import add_lora, frozen_reference, trainable_parameters
from alignlab.run import train
from tests.hydra_app import compose_config


def test_one_dpo_step_raises_the_winner_relative_to_the_loser(fresh_tiny, embeds):
    _, cond, neg = embeds
    add_lora(fresh_tiny, rank=4)
    unet, sched = fresh_tiny.unet, fresh_tiny.scheduler
    sampler = DDIMSampler(num_steps=4, progress=False)
    traj = sampler.sample(unet, sched, cond[:2], neg, fresh_tiny.latent_shape(2), torch.Generator().manual_seed(0))
    step = torch.tensor([1, 1])

    def log_ratios():
        logp = sampler.step_log_prob(unet, sched, traj, step, neg)
        with torch.no_grad(), frozen_reference(fresh_tiny):
            ref = sampler.step_log_prob(unet, sched, traj, step, neg)
        return logp, ref

    logp, ref = log_ratios()
    stats = trajectory_dpo_loss(logp[:1], ref[:1], logp[1:], ref[1:], beta=1.0, clip_eps=None)
    assert stats.loss.item() == pytest.approx(0.6931, abs=1e-4)  # policy == reference at the start
    stats.loss.backward()
    torch.optim.SGD(trainable_parameters(fresh_tiny), lr=1e-2).step()
    with torch.no_grad():
        logp, ref = log_ratios()
    assert (logp[0] - ref[0]) - (logp[1] - ref[1]) > 1e-6


@pytest.mark.parametrize("loss", ["trajectory", "diffusion_dpo"])
def test_dpo_rounds_write_the_contract(loss, tmp_path):
    cfg = compose_config(tmp_path, ["method=dpo", f"method.loss={loss}", "trainer.max_epochs=1", "logger=none",
                                    "sampler.num_steps=3", "sampler.progress=false",
                                    "trainer.enable_progress_bar=false", "method.samples_per_prompt=4",
                                    "method.prompts_per_round=2", "method.num_inner_epochs=1"])
    train(cfg)
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("reward_mean", "reward_winner", "reward_loser", "loss", "dpo_accuracy", "dpo_margin", "grad_norm"):
        assert key in row, key
    assert row["reward_winner"] >= row["reward_loser"]
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    if loss == "trajectory":
        # the first micro-batch starts with policy == reference: its loss is exactly log 2 ... and the
        # round's mean stays near it after a few small steps
        assert row["loss"] == pytest.approx(0.6931, abs=1e-3)
