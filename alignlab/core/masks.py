"""Per-item masks from captured cross-attention (AsynDM and D-Fusion; docs/asyndm.md, docs/dfusion.md).

Attention probabilities (B, h·w, L) -> per-item maps (B, I, h, w) -> binary masks by AsynDM's
relative rule or D-Fusion's absolute per-item threshold -> one curvature map where overlaps go to
the item with the largest k -> nearest upsampling to the latent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def item_attention(probs: torch.Tensor, weights: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Mean attention over each item's token span: (B, h·w, L) x (B, I, L) -> (B, I, h, w).
    Not renormalised (as in both papers)."""
    maps = torch.einsum("bsl,bil->bis", probs.float(), weights.to(probs.device, torch.float32))
    return maps.reshape(*maps.shape[:2], *size)


def relative_masks(maps: torch.Tensor, valid: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """AsynDM: a pixel belongs to an item where attn >= threshold · mean over the item's pixels."""
    mean = maps.mean(dim=(-2, -1), keepdim=True)
    return (maps >= threshold * mean) & valid[:, :, None, None]


def absolute_masks(maps: torch.Tensor, valid: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """D-Fusion: a pixel belongs to an item where attn >= that item's own threshold (B, I)."""
    return (maps >= thresholds[:, :, None, None]) & valid[:, :, None, None]


def largest_k(masks: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, I, h, w) masks and (B, I) curvatures -> (B, h, w): each pixel's largest k among the items
    covering it (overlaps go to the slower item), 0 for background."""
    return (masks.float() * k[:, :, None, None]).amax(dim=1)


def upsample_nearest(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, *size) by nearest interpolation."""
    return F.interpolate(maps[:, None].float(), size=size, mode="nearest")[:, 0]
