"""JPEG (in)compressibility rewards, as in DDPO (kvablack/ddpo-pytorch).

They need no model weights, so they give a fast, deterministic reward for checking a training loop.
"""

from __future__ import annotations

import io

import torch
from PIL import Image


def jpeg_size_kb(images: torch.Tensor) -> torch.Tensor:
    """Size in kilobytes (bytes / 1000) of each image in [0, 1] saved as a quality-95 JPEG."""
    pixels = (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    sizes = []
    for pixel in pixels:
        buffer = io.BytesIO()
        Image.fromarray(pixel).save(buffer, format="JPEG", quality=95)
        sizes.append(buffer.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32, device=images.device)


class JpegCompressibility:
    """Minus the JPEG size: higher for images that compress well."""

    name = "jpeg_compressibility"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return -jpeg_size_kb(images)


class JpegIncompressibility:
    """The JPEG size: higher for images that compress badly."""

    name = "jpeg_incompressibility"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return jpeg_size_kb(images)
