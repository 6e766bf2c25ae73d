"""DPOK (Fan et al., NeurIPS 2023): online policy gradient with a KL regulariser to the pre-trained model on
every denoising step — the reward term weighted by α, the KL by β, the importance ratio clipped
(docs/objectives.md)."""

from __future__ import annotations

import math

from alignlab.objectives.ppo_clip import PPOClip


class DPOK(PPOClip):
    """−α·A·ratio (clipped to 1 ± ε) + β·KL(step ‖ reference step) on each trained step. A is the round builder's
    advantage (DDPO's per-prompt normalised reward: the baseline DPOK learns with a value network is the
    prompt's mean reward here), unclipped. Defaults: the paper's α = 10, β = 0.01, ε = 1e-4."""

    def __init__(self, clip_range: float = 1e-4, reward_weight: float = 10.0, kl_weight: float = 0.01):
        super().__init__(clip_range, math.inf, kl_weight, reward_weight)
