"""The shapes world's renderer: flat palette-coloured shapes on a white background, no anti-aliasing.

Layouts are random but always legal for the grammar: objects never touch (at least GAP background
pixels between bounding boxes, so they are separate connected components), may touch the image
border, and a position prompt's relation holds by at least `min_offset` pixels between box centres
(MIN_OFFSET unless a caller asks for plainer relations, as the UNet's later pre-training does).
"""

from __future__ import annotations

import numpy as np
import torch

from alignlab.world.grammar import BACKGROUND, COLORS, RELATIONS, Spec

SIZE = 32
GAP = 2
MIN_OFFSET = 4
# Object side in pixels, by number of objects. Two and three objects were enlarged from 8-12 and 7-10 px in
# world v2: a circle and a square then differ in more pixels, which doubled the colour binding a model learns.
SIDE_RANGE = {1: (10, 16), 2: (10, 14), 3: (8, 11)}


def shape_mask(shape: str, side: int) -> np.ndarray:
    """A (side, side) boolean mask of the shape, tested at pixel centres."""
    centre = (np.arange(side) + 0.5)[None, :], (np.arange(side) + 0.5)[:, None]  # x, y
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    if shape == "circle":
        return (centre[0] - side / 2) ** 2 + (centre[1] - side / 2) ** 2 <= (side / 2) ** 2
    if shape == "triangle":  # apex up, base of width `side` on the bottom row
        return np.abs(centre[0] - side / 2) <= centre[1] / 2
    raise ValueError(f"unknown shape {shape!r}")


def _layout(spec: Spec, rng: np.random.Generator, size: int, min_offset: int) -> list[tuple[int, int, int]] | None:
    """(x, y, side) of each object, or None when random placement failed (the caller retries)."""
    low, high = SIDE_RANGE[len(spec.objects)]
    boxes: list[tuple[int, int, int]] = []
    for _ in spec.objects:
        side = int(rng.integers(low, high + 1))
        for _attempt in range(50):
            x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            if all(x >= bx + bs + GAP or bx >= x + side + GAP or y >= by + bs + GAP or by >= y + side + GAP
                   for bx, by, bs in boxes):
                boxes.append((x, y, side))
                break
        else:
            return None
    if spec.relation is not None:
        axis, sign = RELATIONS[spec.relation]
        (ax, ay, a_side), (bx, by, b_side) = boxes
        offset = (ax + a_side / 2 - bx - b_side / 2, ay + a_side / 2 - by - b_side / 2)[axis]
        if offset * sign < min_offset:
            return None
    return boxes


def render(spec: Spec, rng: np.random.Generator, size: int = SIZE, min_offset: int = MIN_OFFSET) -> np.ndarray:
    """One (size, size, 3) uint8 image of `spec`. Objects without a colour get a random one."""
    while (boxes := _layout(spec, rng, size, min_offset)) is None:
        pass
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for obj, (x, y, side) in zip(spec.objects, boxes, strict=True):
        color = obj.color or list(COLORS)[int(rng.integers(len(COLORS)))]
        image[y : y + side, x : x + side][shape_mask(obj.shape, side)] = COLORS[color]
    return image


def render_batch(specs: list[Spec], rng: np.random.Generator, size: int = SIZE,
                 min_offset: int = MIN_OFFSET) -> torch.Tensor:
    """(B, 3, size, size) float images in [0, 1], the format models decode to and rewards read."""
    images = np.stack([render(spec, rng, size, min_offset) for spec in specs])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
