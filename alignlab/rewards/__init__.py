"""Reward functions: `reward(images in [0, 1] (B,3,H,W), prompts) -> (B,) float32`."""

from alignlab.rewards.aesthetic import AestheticScore
from alignlab.rewards.chunked import preload
from alignlab.rewards.clip import ClipScore
from alignlab.rewards.hpsv2 import HPSv2
from alignlab.rewards.jpeg import JpegCompressibility, JpegIncompressibility
from alignlab.rewards.multi import MultiReward
from alignlab.rewards.pickscore import PickScore

__all__ = [
    "AestheticScore",
    "ClipScore",
    "HPSv2",
    "JpegCompressibility",
    "JpegIncompressibility",
    "MultiReward",
    "PickScore",
    "preload",
]
