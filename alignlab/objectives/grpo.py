"""GRPO-style group policy gradient (as flow_grpo trains text-to-image models): each sample's advantage is its
reward against the others drawn for the same prompt in the round (a branch family's siblings under
B²-DiffuRL), the update is PPO-clip, and a per-step KL to the frozen pre-trained model keeps the policy near it
(docs/objectives.md)."""

from __future__ import annotations

from alignlab.core.advantages import GROUP_STD
from alignlab.errors import ConfigError
from alignlab.objectives.ppo_clip import PPOClip


class GRPO(PPOClip):
    """PPO-clip on group-normalised advantages plus `kl_weight` × the step's KL to the reference.
    Defaults: flow_grpo's GenEval setting (clip 1e-4, advantages clipped at 5, β = 0.04, the group's mean over the
    round's std)."""

    def __init__(self, clip_range: float = 1e-4, advantage_limit: float = 5.0, kl_weight: float = 0.04,
                 std: str = "round_std"):
        super().__init__(clip_range, advantage_limit, kl_weight)
        if std not in GROUP_STD:
            raise ConfigError(f"method.objective.std must be one of {', '.join(GROUP_STD)}, got {std!r}")
        self.group_advantages = std
