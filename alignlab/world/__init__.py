"""The shapes world: alignlab's embedded default (see docs/world.md).

A renderer, a prompt grammar with held-out splits, an exact oracle, and a pre-trained world
text-to-image model and world CLIP with Stable Diffusion's code path, small enough for a CPU.
"""

from alignlab.world.clip import CHECKPOINT as CLIP_CHECKPOINT
from alignlab.world.clip import NAME as CLIP_NAME
from alignlab.world.grammar import world_prompt_set
from alignlab.world.model import build_world
from alignlab.world.oracle import OracleReward

build_world.default_clip = {"model_name": CLIP_NAME, "pretrained": str(CLIP_CHECKPOINT)}  # reward=clip's default

__all__ = ["OracleReward", "build_world", "world_prompt_set"]
