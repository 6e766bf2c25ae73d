"""The gold judge beside the proxy reward: an exact verdict on images of a prompt set's own prompts, as the
shapes world's oracle is for its grammar (docs/world.md). A prompt set may carry one (`prompt_set.judge`);
generic code reaches it only through the prompt set, so another world plugs in the same way.

A judge has two methods:
- `scores(images, prompts)` -> (score in [0, 1], strict pass as 0.0/1.0), both (B,); None when some prompt
  is not one it can judge;
- `report(images, prompts)` -> `oracle_score`, `oracle_accuracy` and any breakdown it offers (the world's:
  per category), {} when it cannot judge them.
"""

from __future__ import annotations

import torch


def judge_images(prompt_set, images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The prompt set's judge's verdict on the images; None without a judge or for prompts it cannot judge."""
    judge = prompt_set.judge
    return None if judge is None or not prompts else judge.scores(images, prompts)


def oracle_stats(scored: tuple[torch.Tensor, torch.Tensor] | None, prefix: str = "") -> dict[str, float]:
    """Mean judge score and strict accuracy of a batch's verdict (judge_images): the gold metric next to a
    run's proxy reward; empty without a verdict."""
    if scored is None:
        return {}
    scores, passed = scored
    return {f"{prefix}oracle_score": float(scores.mean()), f"{prefix}oracle_accuracy": float(passed.mean())}
