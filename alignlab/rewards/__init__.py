"""Reward functions: `reward(images in [0, 1] (B,3,H,W), prompts) -> (B,) float32`."""

from alignlab.rewards.clip import ClipScore
from alignlab.rewards.jpeg import JpegCompressibility, JpegIncompressibility

__all__ = ["ClipScore", "JpegCompressibility", "JpegIncompressibility"]
