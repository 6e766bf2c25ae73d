"""HPS v2 / v2.1 reward (Wu et al. 2023): ClipScore on an OpenCLIP ViT-H/14 whose weights are the
HPS checkpoint, a local file (HPS_v2_compressed.pt / HPS_v2.1_compressed.pt) holding `state_dict`.

The official code scores image · text of the normalised features, i.e. the cosine ClipScore returns;
open_clip's checkpoint loader unwraps `state_dict` (and a `module.` prefix), so loading goes
through exactly ClipScore's path. The checkpoint must exist when the reward is built; it loads at the
first call.
"""

from __future__ import annotations

import os

from alignlab.errors import WeightsNotFoundError
from alignlab.rewards.clip import ClipScore


class HPSv2(ClipScore):
    """ClipScore with ViT-H-14 and a required local HPS v2(.1) checkpoint."""

    name = "hpsv2"

    def __init__(
        self,
        pretrained: str | None = None,
        model_name: str = "ViT-H-14",
        batch_size: int = 32,
        device: str | None = None,
    ):
        if pretrained is None or not os.path.isfile(pretrained):  # (None would mean random weights to ClipScore)
            raise WeightsNotFoundError(
                f"The hpsv2 reward needs the HPS v2 checkpoint file (got {pretrained!r}); "
                "pass reward.pretrained=/path/to/HPS_v2.1_compressed.pt."
            )
        super().__init__(model_name=model_name, pretrained=pretrained, batch_size=batch_size, device=device)
