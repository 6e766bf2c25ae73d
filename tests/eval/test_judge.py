"""The gold judge plugs in through the prompt set: generic code never imports the shapes world."""

import subprocess
import sys

import numpy as np
import torch

from alignlab.eval.judge import judge_images, oracle_stats
from alignlab.prompts import PromptSet


class HalfJudge:
    """Passes the first image of every pair: a judge another world could bring."""

    def scores(self, images, prompts):
        passed = torch.tensor([float(i % 2 == 0) for i in range(len(prompts))])
        return passed * 0.5 + 0.25, passed

    def report(self, images, prompts):
        return oracle_stats(self.scores(images, prompts))


def test_generic_layers_do_not_import_the_world():
    modules = ["alignlab.run", "alignlab.evaluate", "alignlab.methods", "alignlab.eval.held_out",
               "alignlab.training.callbacks", "alignlab.samplers", "alignlab.rewards", "alignlab.prompts"]
    code = ("import sys, importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
            + "print(sorted(m for m in sys.modules if m.startswith('alignlab.world')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_prompt_sets_judge_gives_the_gold_stats():
    images = torch.zeros(4, 3, 8, 8)
    prompts = ["a", "b", "a", "b"]
    assert judge_images(PromptSet(["a", "b"]), images, prompts) is None  # no judge: no gold metric
    scored = judge_images(PromptSet(["a", "b"], judge=HalfJudge()), images, prompts)
    assert oracle_stats(scored, prefix="eval/") == {"eval/oracle_score": 0.5, "eval/oracle_accuracy": 0.5}
    assert oracle_stats(None) == {}


def test_the_world_prompt_set_carries_the_oracle_as_its_judge():
    from alignlab.world import world_prompt_set
    from alignlab.world.grammar import spec_of
    from alignlab.world.oracle import score_images
    from alignlab.world.render import render_batch

    prompt_set = world_prompt_set(["position"], per_category=2)
    prompts = prompt_set.train
    images = render_batch([spec_of(prompts[0])] * 2, np.random.default_rng(0))  # the second: the wrong scene
    scores, passed = judge_images(prompt_set, images, prompts)
    expected = score_images(images, prompts)
    assert torch.equal(scores, expected[0]) and passed.tolist() == [1.0, 0.0]
    assert prompt_set.judge.report(images, prompts)["oracle_accuracy"] == 0.5
    assert judge_images(prompt_set, images, ["a cat", "a dog"]) is None  # not world prompts
