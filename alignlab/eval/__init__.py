"""Held-out evaluation: fixed-seed samples of a prompt split, scored by a reward (during training and after)."""

from alignlab.eval.evaluate import eval_generator, evaluate_prompts, select_prompts

__all__ = ["eval_generator", "evaluate_prompts", "select_prompts"]
