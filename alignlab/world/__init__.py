"""The shapes world: alignlab's embedded default (see docs/world.md).

A renderer, a prompt grammar with held-out splits, an exact oracle, and a pre-trained world
text-to-image model and world CLIP with Stable Diffusion's code path, small enough for a CPU.
"""

from alignlab.world.grammar import world_prompt_set
from alignlab.world.model import build_world
from alignlab.world.oracle import OracleReward

__all__ = ["OracleReward", "build_world", "world_prompt_set"]
