"""The shapes world's oracle (its GenEval): find the objects from pixels alone and check a prompt's spec.

A pixel is read as a mix of the background and one palette colour: it takes the colour whose
background-to-colour line it lies near, when it is at least half-way along it (so a blurred shape
keeps its area and its rim does not turn into another colour); pixels near no line are OTHER.
The background is the image's median colour when that is near white, so a tint is not an object.
Each colour's connected components of at least MIN_AREA pixels are the objects, their shapes come
from moments and fill, positions from centroids. The thresholds below are calibrated on renders
(exact there) and on renders with the artefacts a generative model makes: pixel noise (sigma 0.05),
a 3x3 box or sigma 0.5 gaussian blur, a tinted or grey background (tests/world/test_world_oracle.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from alignlab.errors import ConfigError
from alignlab.rewards.chunked import ChunkedReward
from alignlab.world.grammar import BACKGROUND, CATEGORIES, COLORS, RELATIONS, Obj, Spec, is_world_prompt, spec_of

OTHER = "other"  # the colour of a component near no palette colour, the shape of one like no shape
# RGB distance from white up to which the image's median is taken as its background (grey 200: 95); under
# half the palette's least contrast with white (yellow: 242), so an object colour, or its half-mix, never is.
MAX_TINT = 96.0
MAX_RESIDUAL = 64.0  # RGB distance from a background-to-colour line still on it: 5 sigmas of noise 0.05
MIN_AREA = 10  # smaller components are specks; the smallest legal object (triangle, side 8) has 32 px
RELATION_MARGIN = 1.0  # pixels between centroids a relation needs; renders give >= 1.64 (see `_relation`)
# Shape thresholds, with the ranges measured on renders under each artefact above (3x3 box blur plus
# noise, the harshest, in brackets): vertical skewness is <= -0.55 (-0.27) for triangles and within
# +-0.1 for circles and squares; the diagonal/axis 4th-moment ratio is >= 1.31 (1.11) for squares and
# <= 1.05 for circles; bounding-box fill is >= 0.48 for triangles, 0.65 for circles, 0.84 for squares.
TRIANGLE_SKEW = 0.2
SQUARE_DIAGONAL = 1.1
TRIANGLE_FILL, CIRCLE_FILL, SQUARE_FILL = 0.4, 0.6, 0.8


@dataclass(frozen=True)
class Detection:
    """One object found in an image; color and shape may be OTHER."""

    color: str
    shape: str
    centroid: tuple[float, float]  # (x, y) in pixels, pixel centres at +0.5
    area: int


@dataclass(frozen=True)
class Verdict:
    """A spec checked on one image; `constraints` (name -> met) and `detections` are for reports."""

    score: float  # fraction of constraints met
    passed: bool  # every constraint met
    constraints: dict[str, bool]
    detections: tuple[Detection, ...]


def _pixels(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(H, W, 3) float RGB in [0, 255] from a (3, H, W) tensor in [0, 1] or an (H, W, 3) uint8 array."""
    if isinstance(image, torch.Tensor):
        return image.detach().float().cpu().permute(1, 2, 0).numpy() * 255
    return np.asarray(image, dtype=np.float64)


def _labels(pixels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Each pixel's index into the returned names (palette colours then OTHER), or -1 for background."""
    white = np.array(BACKGROUND, dtype=np.float64)
    background = np.median(pixels.reshape(-1, 3), axis=0)
    if np.linalg.norm(background - white) > MAX_TINT:  # objects fill most of the image, or it is coloured
        background = white
    directions = np.array(list(COLORS.values()), dtype=np.float64) - background  # (C, 3)
    offset = pixels - background  # (H, W, 3)
    alpha = offset @ directions.T / (directions**2).sum(1)  # (H, W, C): how far along each colour's line
    residual = np.linalg.norm(offset[..., None, :] - alpha[..., None] * directions, axis=-1)
    best = residual.argmin(-1)
    best_alpha = np.take_along_axis(alpha, best[..., None], -1)[..., 0]
    on_line = residual.min(-1) <= MAX_RESIDUAL
    labels = np.where(on_line, np.where(best_alpha >= 0.5, best, -1), len(COLORS))
    return labels, [*COLORS, OTHER]


def _shape(mask: np.ndarray) -> str:
    """Square, circle or apex-up triangle from moments, which survive blur and noise better than outlines.

    Vertical skewness is about -0.57 for an apex-up triangle (mass piles towards the base) and 0 for
    the others; mass reaches 4/3 as far along the diagonals as along the axes (4th moments) in a square
    and equally far in a circle. Anything else (a bar, a ring, a triangle upside down) is OTHER.
    """
    ys, xs = np.nonzero(mask)
    height, width = np.ptp(ys) + 1, np.ptp(xs) + 1
    if not 2 / 3 <= height / width <= 3 / 2:
        return OTHER
    fill = len(ys) / (height * width)
    dy, dx = ys - ys.mean(), xs - xs.mean()
    skew = (dy**3).mean() / (dy**2).mean() ** 1.5
    diagonal = ((dx + dy) ** 4 + (dx - dy) ** 4).mean() / (4 * (dx**4 + dy**4).mean())
    if skew <= -TRIANGLE_SKEW:
        return "triangle" if fill >= TRIANGLE_FILL else OTHER
    if skew >= TRIANGLE_SKEW:
        return OTHER
    if diagonal >= SQUARE_DIAGONAL:
        return "square" if fill >= SQUARE_FILL else OTHER
    return "circle" if fill >= CIRCLE_FILL else OTHER


def detect(image: torch.Tensor | np.ndarray) -> list[Detection]:
    """The objects in one image: a (3, H, W) float tensor in [0, 1] or an (H, W, 3) uint8 array."""
    labels, names = _labels(_pixels(image))
    detections = []
    for index, color in enumerate(names):
        components, count = ndimage.label(labels == index, structure=np.ones((3, 3)))
        for component in range(1, count + 1):
            mask = components == component
            area = int(mask.sum())
            if area >= MIN_AREA:
                ys, xs = np.nonzero(mask)
                centroid = (float(xs.mean()) + 0.5, float(ys.mean()) + 0.5)
                detections.append(Detection(color, _shape(mask), centroid, area))
    return detections


def _matches(detection: Detection, obj: Obj) -> bool:
    return detection.shape == obj.shape and obj.color in (None, detection.color)


def _relation(spec: Spec, detections: list[Detection]) -> bool:
    """Whether the largest A and the largest B sit in the relation, centroids at least RELATION_MARGIN apart.

    Renders put box centres >= render.MIN_OFFSET = 4 apart; an apex-up triangle's centroid sits up to
    2.36 px (side 14, the largest of two objects) below its box centre, so render centroids are >= 1.64 px
    apart: 1 px leaves slack.
    """
    axis, sign = RELATIONS[spec.relation]
    found = [max((d for d in detections if _matches(d, obj)), key=lambda d: d.area, default=None)
             for obj in spec.objects]
    if None in found:
        return False
    a, b = found
    return sign * (a.centroid[axis] - b.centroid[axis]) >= RELATION_MARGIN


def check(spec: Spec, image: torch.Tensor | np.ndarray) -> Verdict:
    """The spec's constraints on one image (formats as for `detect`): each object present (counting: n of
    it and nothing else), the relation on centroids, and exactly as many objects as the prompt names."""
    return judge(spec, detect(image))


def judge(spec: Spec, detections: list[Detection]) -> Verdict:
    """`check` on objects already detected (a probe may edit them first, e.g. to forgive shapes)."""
    constraints: dict[str, bool] = {}
    if spec.category == "counting":
        obj, n = spec.objects[0], len(spec.objects)
        matching = sum(_matches(d, obj) for d in detections)
        constraints[f"{n} {obj.phrase}s"] = matching == n
        constraints["no other objects"] = matching == len(detections)
    else:
        for obj in spec.objects:
            constraints[f"{obj.phrase} present"] = any(_matches(d, obj) for d in detections)
        if spec.relation is not None:
            a, b = spec.objects
            constraints[f"{a.phrase} {spec.relation} {b.phrase}"] = _relation(spec, detections)
        n = len(spec.objects)
        constraints[f"exactly {n} object{'s' * (n > 1)}"] = len(detections) == n
    met = list(constraints.values())
    return Verdict(sum(met) / len(met), all(met), constraints, tuple(detections))


def _spec(prompt: str) -> Spec:
    try:
        return spec_of(prompt)
    except KeyError:
        raise ConfigError(
            f"The oracle only scores the shapes world's prompts (alignlab.world.grammar), not {prompt!r}; "
            "use the world's prompts or another reward."
        ) from None


def score_images(images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (B,) float32 and strict passes (B,) bool of (B, 3, H, W) images in [0, 1] for world prompts."""
    if len(images) != len(prompts):
        raise ValueError(f"Got {len(images)} images but {len(prompts)} prompts.")
    specs = [_spec(prompt) for prompt in prompts]  # every prompt checked before any work
    verdicts = [check(spec, image) for spec, image in zip(specs, images.detach().cpu(), strict=True)]
    scores = torch.tensor([v.score for v in verdicts], dtype=torch.float32, device=images.device)
    passed = torch.tensor([v.passed for v in verdicts], dtype=torch.bool, device=images.device)
    return scores, passed


class OracleReward(ChunkedReward):
    """The oracle's score as a reward: ground truth for the shapes world, non-differentiable like GenEval."""

    name = "oracle"
    device = None

    def __init__(self, batch_size: int = 256):
        self.batch_size = batch_size

    def _load(self, device: torch.device) -> None:
        """Nothing to load: the oracle reads pixels only."""

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return score_images(images, prompts)[0]


def world_scores(images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """score_images of a batch of world prompts; None when some prompt is not one (the oracle cannot judge it)."""
    if not prompts or not all(map(is_world_prompt, prompts)):
        return None
    scores, passed = score_images(images, prompts)
    return scores, passed.float()


def by_category(prompts: list[str], values) -> dict[str, float]:
    """Mean of per-row `values` over the rows of each world category (GenEval's per-category breakdown), in
    the grammar's category order."""
    groups: dict[str, list[float]] = {}
    for prompt, value in zip(prompts, values, strict=True):
        groups.setdefault(_spec(prompt).category, []).append(float(value))
    return {c: float(np.mean(groups[c])) for c in CATEGORIES if c in groups}


def oracle_report(images: torch.Tensor, prompts: list[str]) -> dict:
    """Mean oracle score and strict accuracy and their per-category breakdown (`oracle_by_category`, with each
    category's image count) from one scoring of the images; empty when some prompt is not a world prompt."""
    scored = world_scores(images, prompts)
    if scored is None:
        return {}
    scores, passed = scored
    score, accuracy = by_category(prompts, scores.tolist()), by_category(prompts, passed.tolist())
    counts = Counter(_spec(p).category for p in prompts)
    return {"oracle_score": float(scores.mean()), "oracle_accuracy": float(passed.mean()),
            "oracle_by_category": {c: {"oracle_score": score[c], "oracle_accuracy": accuracy[c], "images": counts[c]}
                                   for c in score}}


class WorldJudge:
    """The oracle as the world prompt set's gold judge (alignlab.eval.judge): how runs, evaluations and
    AsynDM's comparison reach it without importing the world."""

    scores = staticmethod(world_scores)
    report = staticmethod(oracle_report)
