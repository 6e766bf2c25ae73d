"""Every objective trains through every round builder it fits, from the command line's config (`method/objective=`),
and a combination that cannot work is refused in one sentence at start-up."""

import json

import pytest
from safetensors.torch import load_file

from alignlab.run import _root_cause, build, train
from tests.hydra_app import FAST, NO_EVAL, compose_config

ROUNDS = ["trainer.max_epochs=2", "logger=csv", NO_EVAL]


def lora_change(run_dir) -> float:
    """Largest change of a LoRA weight from its initial value (peft's gaussian init: A random, B zero)."""
    weights = load_file(str(run_dir / "lora" / "pytorch_lora_weights.safetensors"))
    return max(float(w.abs().max()) for name, w in weights.items() if "lora_B" in name or "lora.up" in name)


@pytest.mark.parametrize("overrides, logged", [
    (["method=ddpo", "method/objective=grpo", "method.images_per_prompt=2"], "kl_reference"),
    (["method=ddpo", "method/objective=dpok"], "kl_reference"),
    (["method=ddpo", "method/objective=nft"], "nft_loss"),
    (["method=b2diffurl", "method/objective=grpo", "method.num_branches=2", "method.split_step_min=1",
      "method.split_step_max=3", "method.num_stages=2", "method.pos_threshold=0", "method.neg_threshold=0"],
     "kl_reference"),
    (["method=b2diffurl", "method/objective=nft", "method.num_branches=2", "method.split_step_min=1",
      "method.split_step_max=3", "method.num_stages=2", "method.pos_threshold=0", "method.neg_threshold=0"],
     "nft_loss"),
    (["method=ddpo", "method/objective=nft", "sampler=asyn", "prompts=asyn_animals", "sampler.num_steps=3",
      "method.images_per_prompt=2"],
     "nft_loss"),
])
def test_objectives_train_through_the_round_builders(overrides, logged, tmp_path):
    train(compose_config(tmp_path, [*FAST, *ROUNDS, *overrides]))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row[logged] > 0 for row in rows)
    assert lora_change(tmp_path) > 0  # the update reached the weights


def test_grpo_groups_each_prompts_images(tmp_path):
    """method.images_per_prompt draws the round's prompts that many images each: GRPO's groups."""
    cfg = compose_config(tmp_path, [*FAST, "method=ddpo", "method/objective=grpo", "method.images_per_prompt=2",
                                    "method.num_batches_per_round=2", "prompts=simple",
                                    "method.log_images=8"])
    method, _ = build(cfg, tmp_path)
    method.start_round()
    prompts = method.showcase["prompts"]
    assert len(prompts) == 8 and all(prompts[i] == prompts[i + 1] for i in range(0, 8, 2))


@pytest.mark.parametrize("overrides, message", [
    (["method=dpo", "method/objective=nft"], "method.objective: DiffusionNFT trains on advantages and DPO's rounds "
                                             "make pairs"),
    (["method=ddpo", "method/objective=grpo", "finetune.mode=full"], "this method compares the policy with the "
                                                                      "pre-trained model"),
    (["method=ddpo", "method.images_per_prompt=3"], "method.images_per_prompt must divide the round's 64 images"),
])
def test_combinations_that_cannot_work_are_refused(overrides, message, tmp_path):
    with pytest.raises(Exception) as info:
        build(compose_config(tmp_path, ["model=tiny", "reward=jpeg_compressibility", *overrides]), tmp_path)
    assert str(_root_cause(info.value)).startswith(message)
