"""Minimal edits of the grammar: minimal pairs, noisy captions, and how far apart the text encoders put them.

A model can only draw (and a reward can only score) what its text encoder separates. The minimal pairs
are prompts that differ in exactly one thing the oracle checks: the relation's direction, which object
holds which colour, or the count. `sequence_difference` measures the text-to-image encoder the way the
UNet sees it (the whole padded sequence), `clip_text_cosine` the world CLIP's text tower.

The same edits make the world's pre-training captions wrong at a controlled rate (`scene_for_caption`): a model
trained on them can draw every composition but samples the wrong one a known fraction of the time, the
misalignment that alignment methods are meant to fix (docs/world.md, "World v2").
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from alignlab.world.grammar import COUNTS, Obj, Spec, all_specs

OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of",
            "above": "below", "below": "above"}
KINDS = ("relation", "colour_swap", "count")


def reversed_relation(spec: Spec) -> Spec:
    return replace(spec, relation=OPPOSITE[spec.relation])


def mirrored(spec: Spec) -> Spec:
    """The same scene described from the other object: "A left of B" -> "B right of A" (a paraphrase)."""
    return replace(spec, objects=spec.objects[::-1], relation=OPPOSITE[spec.relation])


def swapped_colours(spec: Spec) -> Spec:
    a, b = spec.objects
    return replace(spec, objects=(Obj(a.shape, b.color), Obj(b.shape, a.color)))


def other_count(spec: Spec) -> Spec:
    (count,) = [n for n in COUNTS.values() if n != len(spec.objects)]
    return replace(spec, objects=(spec.objects[0],) * count)


def minimal_pairs(kind: str) -> list[tuple[str, str]]:
    """Every unordered pair of grammar prompts that differ only by `kind` (one of KINDS)."""
    if kind == "relation":
        specs, partner = all_specs(["position"]), reversed_relation
    elif kind == "colour_swap":
        specs, partner = all_specs(["colour_attr", "position"]), swapped_colours
    elif kind == "count":
        specs, partner = [s for s in all_specs(["counting"]) if len(s.objects) == 2], other_count
    else:
        raise ValueError(f"unknown contrast {kind!r}; pick from {KINDS}")
    pairs = {tuple(sorted((s.prompt, partner(s).prompt))) for s in specs}
    return sorted(pairs)


@torch.no_grad()
def sequence_difference(encode, pairs: list[tuple[str, str]]) -> torch.Tensor:
    """Per pair, |E(a) - E(b)| / |E(a)| over the whole embedding sequence `encode` returns (the UNet's input)."""
    first, second = encode([a for a, _ in pairs]), encode([b for _, b in pairs])
    return (first - second).flatten(1).norm(dim=1) / first.flatten(1).norm(dim=1)


@torch.no_grad()
def clip_text_cosine(embed, pairs: list[tuple[str, str]]) -> torch.Tensor:
    """Per pair, the cosine of the two prompts' text embeddings; `embed` gives unit vectors
    (ClipScore.text_embeddings)."""
    return (embed([a for a, _ in pairs]) * embed([b for _, b in pairs])).sum(dim=1)


def dropped_object(spec: Spec, rng: np.random.Generator) -> Spec:
    """A scene with only one of a two-object spec's objects (SD's most common failure: an object left out)."""
    return Spec("single_object", (spec.objects[int(rng.integers(2))],))


# How each category's scenes go wrong when their caption does not describe them.
EDITS = {
    "two_objects": (dropped_object,),
    "colour_attr": (swapped_colours, dropped_object),
    "position": (reversed_relation, swapped_colours, dropped_object),
    "counting": (other_count,),
}


def scene_for_caption(spec: Spec, rng: np.random.Generator, rates: dict[str, float]) -> Spec:
    """The scene rendered for a pre-training caption of `spec`: with probability rates[category] one of the
    category's EDITS (chosen uniformly), else `spec` itself. The caption is always `spec.prompt`."""
    edits = EDITS.get(spec.category, ())
    if not edits or rng.random() >= rates.get(spec.category, 0.0):
        return spec
    edit = edits[int(rng.integers(len(edits)))]
    return edit(spec, rng) if edit is dropped_object else edit(spec)
