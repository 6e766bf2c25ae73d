"""D-Fusion's fused targets on the tiny model, and the method end to end."""

import json

import pytest
import torch

from alignlab.core.attention import capture_layers
from alignlab.core.fusion import KVFusion, fused_targets, self_attention_layers
from alignlab.samplers.ddim import DDIMSampler
from alignlab.core.token_spans import Item, ItemBatch
from alignlab.errors import ConfigError
from alignlab.run import train
from tests.hydra_app import comparable, compose_config, same_lora

PROMPTS = ["a red circle", "a blue square"]


def seeds():
    return [torch.Generator().manual_seed(100 + i) for i in range(4)]


@pytest.fixture(scope="module")
def rollout(tiny_model):
    sampler = DDIMSampler(num_steps=5, progress=False)
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    neg = tiny_model.encode_prompts([""])
    traj = sampler.sample(tiny_model.unet, tiny_model.scheduler, tiny_model.encode_prompts(prompts), neg,
                          tiny_model.latent_shape(4), seeds())
    return sampler, traj, neg


def run_fusion(tiny_model, rollout, threshold, fuse=(2, 5)):
    sampler, traj, neg = rollout
    reference, base = traj.index(torch.tensor([0, 2])), traj.index(torch.tensor([1, 3]))
    items = ItemBatch.build(tiny_model.tokenizer, PROMPTS,
                            [[Item("circle", threshold=threshold)], [Item("square", threshold=threshold)]])
    capture, size = capture_layers(tiny_model.unet, tiny_model.latent_shape(1)[-2:])
    replay = [seeds()[1], seeds()[3]]
    fusion = KVFusion(self_attention_layers(tiny_model.unet))
    target, masks = fused_targets(sampler, tiny_model.unet, tiny_model.scheduler, reference, base, neg, replay,
                                  items, fuse, fusion, capture, size)
    return base, target, masks


def test_empty_mask_leaves_the_target_equal_to_the_base(tiny_model, rollout):
    base, target, masks = run_fusion(tiny_model, rollout, threshold=float("inf"))
    assert masks.sum() == 0
    assert torch.equal(target.latents, base.latents) and torch.equal(target.log_probs, base.log_probs)


def test_full_mask_changes_only_the_fused_steps(tiny_model, rollout):
    base, target, masks = run_fusion(tiny_model, rollout, threshold=0.0)
    assert masks[2:].min() == 1 and masks[:2].max() == 0
    assert torch.equal(target.latents[:, :3], base.latents[:, :3])  # steps 0-1 unfused: same as the base
    assert not torch.equal(target.latents[:, 3], base.latents[:, 3])


def test_two_unet_passes_per_fused_step(tiny_model, rollout):
    calls = []
    handle = tiny_model.unet.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        run_fusion(tiny_model, rollout, threshold=0.0, fuse=(2, 5))
    finally:
        handle.remove()
    assert len(calls) == 2 * 3 + 2  # 3 fused steps x (reference + target) + 2 unfused target steps
    assert set(calls) == {4}  # each pass is the 2 pairs' CFG batch


def test_persisted_target_replays_exactly(tiny_model, rollout):
    """Re-running the fusion from the stored reference and base seeds reproduces the target bit for bit."""
    _, first, _ = run_fusion(tiny_model, rollout, threshold=0.01)
    _, again, _ = run_fusion(tiny_model, rollout, threshold=0.01)
    assert torch.equal(first.latents, again.latents) and torch.equal(first.log_probs, again.log_probs)


def test_samples_per_prompt_must_be_a_multiple_of_4(tmp_path):
    cfg = compose_config(tmp_path, ["method=dfusion", "method.samples_per_prompt=6", "logger=none"])
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException) as info:
        train(cfg)
    assert isinstance(info.value.__cause__, ConfigError) and "multiple of 4" in str(info.value.__cause__)


def test_dfusion_round_end_to_end(tmp_path):
    cfg = compose_config(tmp_path, ["method=dfusion", "prompts=asyn_animals", "trainer.max_epochs=1", "logger=none",
                                    "sampler.num_steps=4", "sampler.progress=false",
                                    "trainer.enable_progress_bar=false", "method.prompts_per_round=1",
                                    "method.samples_per_prompt=4", "method.num_inner_epochs=1",
                                    "method.default_threshold=0.0"])
    train(cfg)
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("reward_reference", "reward_base", "reward_target", "dpo_accuracy", "dpo_margin", "loss",
                "mask_fraction"):
        assert key in row, key
    assert row["reward_reference"] >= row["reward_base"]
    assert row["mask_fraction"] == 1.0  # asyn_animals' items have no threshold: the default 0 masks everything
    assert row["loss"] == pytest.approx(0.6931, abs=1e-3)  # first round: policy == reference
    assert (tmp_path / "samples" / "round_0000.png").is_file()
    assert (tmp_path / "samples" / "masks_round_0000.png").is_file()


def test_dfusion_with_ddpo_trains_on_samples_and_targets(tmp_path):
    cfg = compose_config(tmp_path, ["method=dfusion", "method.algo=ddpo", "prompts=dfusion_t1", "trainer.max_epochs=1",
                                    "model=tiny", "reward=jpeg_compressibility", "optimizer.lr=3e-4",
                                    "logger=none", "sampler.num_steps=3", "sampler.progress=false",
                                    "trainer.enable_progress_bar=false", "method.prompts_per_round=1",
                                    "method.samples_per_prompt=4", "method.num_inner_epochs=1",
                                    "method.clip_range=0.1"])
    train(cfg)
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert row["samples_per_round"] == 6  # 4 samples + 2 fused targets
    for key in ("reward_target", "approx_kl", "clipfrac", "grad_norm"):
        assert key in row, key
    # the targets' pi_old is the unfused policy: the first micro-batch's ratio is exactly 1
    assert row["approx_kl"] < 1e-6


def test_two_rounds_equal_one_round_resume_one_round(tmp_path):
    """Fusion replays stored noise and DPO scores against a reference: nothing of either may depend on the process."""
    def run(run_dir, rounds):
        train(compose_config(run_dir, [
            "method=dfusion", "prompts=dfusion_t1", "model=tiny", "reward=jpeg_compressibility",
            "logger=none", "sampler.num_steps=3", "sampler.progress=false", "trainer.enable_progress_bar=false",
            "method.prompts_per_round=1", "method.samples_per_prompt=4", "method.num_inner_epochs=1",
            "optimizer.lr=1e-2", f"trainer.max_epochs={rounds}"]))
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    straight = run(tmp_path / "a", 2)
    run(tmp_path / "b", 1)
    assert comparable(run(tmp_path / "b", 2)) == comparable(straight)
    assert same_lora(tmp_path / "a", tmp_path / "b")
    assert all(row["grad_norm"] > 0 for row in straight)  # both rounds moved the weights the resume restores
