"""The shapes world's prompt grammar: GenEval-like categories, structured specs, held-out splits.

Every prompt is generated from a `Spec` (category, objects, relation), so the renderer can draw it
and the oracle can check it. The train/test split holds out attribute COMBINATIONS: one colour-shape
binding per colour (e.g. "red triangle") and three shape orders never appear in a train prompt, so
test accuracy measures compositional generalisation, like the papers' held-out templates.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from alignlab.core.token_spans import Item
from alignlab.errors import ConfigError

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
}
BACKGROUND = (255, 255, 255)
SHAPES = ("circle", "square", "triangle")
COUNTS = {"two": 2, "three": 3}
RELATIONS = {  # phrase -> (axis, sign): object A's centroid minus B's along axis (0: x, 1: y) has this sign
    "to the left of": (0, -1),
    "to the right of": (0, 1),
    "above": (1, -1),
    "below": (1, 1),
}
CATEGORIES = ("single_object", "two_objects", "counting", "colour_attr", "position")

HELD_OUT_BINDINGS = frozenset(
    {("red", "triangle"), ("green", "square"), ("blue", "circle"),
     ("yellow", "triangle"), ("purple", "square"), ("orange", "circle")}
)
HELD_OUT_SHAPE_ORDERS = frozenset({("circle", "triangle"), ("square", "circle"), ("triangle", "square")})

# Per-item defaults for AsynDM (curvature k of the items' concave schedule) and D-Fusion (absolute
# cross-attention threshold of an item's mask); one object needs less slowing than a composition.
ITEM_K = {"single_object": 0.7}
DEFAULT_ITEM_K = 0.5
ITEM_THRESHOLD = 0.015


@dataclass(frozen=True)
class Obj:
    """One object of a prompt; colour None: any colour (the `two_objects` category)."""

    shape: str
    color: str | None = None

    @property
    def phrase(self) -> str:
        return f"{self.color} {self.shape}" if self.color else self.shape


@dataclass(frozen=True)
class Spec:
    """What a prompt asks for. Counting specs list the same object `count` times."""

    category: str
    objects: tuple[Obj, ...]
    relation: str | None = None

    @property
    def prompt(self) -> str:
        first = self.objects[0]
        if self.category == "counting":
            word = next(w for w, n in COUNTS.items() if n == len(self.objects))
            return f"{word} {first.phrase}s"
        if self.category == "position":
            return f"{_article(first.phrase)} {self.relation} {_article(self.objects[1].phrase)}"
        return " and ".join(_article(o.phrase) for o in self.objects)

    @property
    def item_words(self) -> list[str]:
        """The object nouns as they appear in the prompt (AsynDM's and D-Fusion's mask words)."""
        if self.category == "counting":
            return [self.objects[0].shape + "s"]
        return list(dict.fromkeys(o.shape for o in self.objects))

    @property
    def items(self) -> list[Item]:
        k = ITEM_K.get(self.category, DEFAULT_ITEM_K)
        return [Item(word, k, ITEM_THRESHOLD) for word in self.item_words]

    @property
    def split(self) -> str:
        """'test' when the prompt contains a held-out binding or shape order, else 'train'."""
        if any((o.color, o.shape) in HELD_OUT_BINDINGS for o in self.objects):
            return "test"
        shapes = tuple(o.shape for o in self.objects)
        if self.category == "two_objects" and shapes in HELD_OUT_SHAPE_ORDERS:
            return "test"
        return "train"


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _specs(category: str) -> list[Spec]:
    distinct_shapes = list(itertools.permutations(SHAPES, 2))
    distinct_colors = list(itertools.permutations(COLORS, 2))
    if category == "single_object":
        return [Spec(category, (Obj(s, c),)) for c in COLORS for s in SHAPES]
    if category == "two_objects":
        return [Spec(category, (Obj(a), Obj(b))) for a, b in distinct_shapes]
    if category == "counting":
        return [Spec(category, (Obj(s, c),) * n) for n in COUNTS.values() for c in COLORS for s in SHAPES]
    pairs = [(Obj(a, ca), Obj(b, cb)) for a, b in distinct_shapes for ca, cb in distinct_colors]
    if category == "colour_attr":
        return [Spec(category, pair) for pair in pairs]
    if category == "position":
        return [Spec(category, pair, relation) for relation in RELATIONS for pair in pairs]
    raise ValueError(f"unknown world category {category!r}; pick from {CATEGORIES}")


def all_specs(categories: tuple[str, ...] | list[str] = CATEGORIES) -> list[Spec]:
    """Every prompt of the given categories, in a fixed order."""
    return [spec for category in categories for spec in _specs(category)]


def is_world_prompt(prompt: str) -> bool:
    return prompt in _BY_PROMPT


def spec_of(prompt: str) -> Spec:
    """The spec a world prompt was generated from (KeyError for a prompt outside the grammar)."""
    return _BY_PROMPT[prompt]


_BY_PROMPT = {spec.prompt: spec for spec in all_specs()}


def evenly_spread(entries: list, count: int | None) -> list:
    """`count` of `entries` evenly spread over their order (all of them if `count` is None or not fewer):
    the world's prompt subsets sample the whole grammar, not its first nouns or colours."""
    if count is None or len(entries) <= count:
        return list(entries)
    step = len(entries) / count
    return [entries[int(i * step)] for i in range(count)]


def world_prompt_set(categories: list[str] | tuple[str, ...] = CATEGORIES, per_category: int | None = None,
                     name: str = "world", k: float | None = None, threshold: float | None = None,
                     subset: list[str] | tuple[str, ...] | None = None):
    """The world's prompts of `categories` with their items, split into train and test; `per_category`
    keeps that many prompts of each category and split, evenly spread over the grammar's order. `subset`
    draws them from these grammar prompts only (each in the split the grammar gives it). `k` gives
    every item that AsynDM curvature instead of the grammar's per-category default (the paper's k ablation),
    `threshold` that D-Fusion mask threshold instead of ITEM_THRESHOLD (to calibrate the masks' coverage)."""
    from alignlab.prompts import PromptSet
    from alignlab.world.oracle import WorldJudge

    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ConfigError(f"prompts.categories must be drawn from {', '.join(CATEGORIES)}, got {unknown}")
    if per_category is not None and per_category < 1:
        raise ConfigError(f"prompts.per_category must be >= 1 (or null: all), got {per_category}")
    if k is not None and not 0 < k < 1:
        raise ConfigError(f"prompts.k must be in (0, 1) (or null: the grammar's per-category k), got {k}")
    if threshold is not None and not 0 < threshold < 1:
        raise ConfigError(f"prompts.threshold must be in (0, 1) (or null: {ITEM_THRESHOLD}), got {threshold}")
    outside = [p for p in subset or () if not is_world_prompt(p)]
    if outside:
        raise ConfigError(f"prompts.subset must hold prompts of the world's grammar; not in it: {outside}")
    chosen = None if subset is None else {spec_of(p) for p in subset}
    override = {key: value for key, value in (("k", k), ("threshold", threshold)) if value is not None}
    splits: dict[str, list] = {"train": [], "test": []}
    for category in categories:
        for split, entries in splits.items():
            specs = evenly_spread([s for s in _specs(category) if s.split == split and (chosen is None or s in chosen)],
                                  per_category)
            entries += [{"prompt": s.prompt, "items": [{"word": i.word, "k": i.k, "threshold": i.threshold, **override}
                                                     for i in s.items]} for s in specs]
    return PromptSet(splits["train"], splits["test"], name=name, judge=WorldJudge())
