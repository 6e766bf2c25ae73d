"""The world CLIP: a small open_clip model trained contrastively on world renders and their captions.

It is an ordinary open_clip model (config world-clip.json, registered with open_clip), so the CLIP
rewards load it through exactly the code that loads ViT-H-14; only the name and checkpoint differ.
Each caption comes with one hard negative per edit that applies to it (colours exchanged between objects,
the opposite relation, another count, another colour, another shape), so the score must read bindings and
relations, not word bags; and each position caption must agree with its paraphrase ("B right of A" for "A left
of B"), without which relations are never learned (PARAPHRASE_AGREEMENT).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from alignlab.rewards.clip import MODEL_CONFIGS, OpenClip
from alignlab.world.contrasts import mirrored, other_count, reversed_relation, swapped_colours
from alignlab.world.grammar import COLORS, SHAPES, Obj, Spec
from alignlab.world.pretraining import LoopConfig, sample_specs, train_loop
from alignlab.world.render import render_batch

NAME = "world-clip"
CONFIG = Path(__file__).parent / f"{NAME}.json"
CHECKPOINT = Path(__file__).parent / "weights" / "world_clip.safetensors"
CLIP = LoopConfig(steps=3000, lr=1e-3, warmup=100, ema_decay=0.995, batch_size=64)
# A second phase from the first's EMA weights at a lower rate: relation accuracy is still rising after 3000 steps.
CLIP_RELATIONS = LoopConfig(steps=1500, lr=3e-4, warmup=50, ema_decay=0.995, batch_size=64)
CLIP_PHASES = (("clip", CLIP), ("clip_relations", CLIP_RELATIONS))
# Half of each batch is position captions: relations are what the CLIP learns last (docs/world.md, "World v2").
CLIP_CATEGORY_WEIGHTS = {"single_object": 0.1, "two_objects": 0.1, "counting": 0.15, "colour_attr": 0.15,
                         "position": 0.5}
# Most a caption's and its hard negative's text embeddings may agree (cosine) before a penalty applies, and its
# weight: contrastive learning alone leaves "left of" and "right of" at cosine 0.999 (docs/world.md).
TEXT_MARGIN, TEXT_MARGIN_WEIGHT = 0.9, 10.0
# Least cosine a position caption's text embedding must reach with its paraphrase ("A left of B", "B right of A").
# Without it the world CLIP never learns relations (relation retrieval stays at chance, 0.5): every layout comes
# with both phrasings, so the image tower's gradients for "left" and "right" cancel until the text tower maps a
# caption and its paraphrase together, and the text tower has no reason to until the images tell them apart.
PARAPHRASE_AGREEMENT = 0.97


if CONFIG not in MODEL_CONFIGS:  # reward=clip can load the world CLIP by its name
    MODEL_CONFIGS.append(CONFIG)


def _other(options, current, rng: np.random.Generator):
    choices = [o for o in options if o != current]
    return choices[int(rng.integers(len(choices)))]


def _recoloured_or_reshaped(spec: Spec, edit: str, rng: np.random.Generator) -> Spec:
    """`spec` with one object's colour (edit="color") or shape (edit="shape") changed to an unused one."""
    objects = list(spec.objects)
    index = 0 if spec.category == "counting" else int(rng.integers(len(objects)))
    target = objects[index]
    if edit == "color":
        taken = {o.color for o in objects}
        new = Obj(target.shape, _other([c for c in COLORS if c not in taken or c == target.color], target.color, rng))
    else:
        taken = {o.shape for o in objects}
        new = Obj(_other([s for s in SHAPES if s not in taken or s == target.shape], target.shape, rng), target.color)
    objects = [new] * len(objects) if spec.category == "counting" else objects[:index] + [new] + objects[index + 1:]
    return replace(spec, objects=tuple(objects))


def _edits(spec: Spec) -> list[str]:
    edits = ["shape"] + (["color"] if spec.objects[0].color else [])
    if spec.category == "counting":
        edits.append("count")
    if spec.category in ("colour_attr", "position"):
        edits.append("swap_colors")
    if spec.relation:
        edits.append("relation")
    return edits


def _edited(spec: Spec, edit: str, rng: np.random.Generator) -> Spec:
    if edit == "count":
        return other_count(spec)
    if edit == "relation":
        return reversed_relation(spec)
    if edit == "swap_colors":
        return swapped_colours(spec)
    return _recoloured_or_reshaped(spec, edit, rng)


def hard_negative(spec: Spec, rng: np.random.Generator) -> Spec:
    """A grammatical spec that differs from `spec` in one binding, relation, count, colour or shape."""
    edits = _edits(spec)
    return _edited(spec, edits[int(rng.integers(len(edits)))], rng)


def hard_negatives(spec: Spec, rng: np.random.Generator) -> list[Spec]:
    """One negative per kind of edit that applies to `spec` (relation, colour swap, count, colour, shape):
    every distinction the oracle checks is contrasted in every batch."""
    return [_edited(spec, edit, rng) for edit in _edits(spec)]


def degrade(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mild blur and noise on part of a batch, so the score transfers from clean renders to samples."""
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = (torch.rand(len(images), 1, 1, 1, generator=generator) < 0.3).float() * 0.5
    sigma = torch.rand(len(images), 1, 1, 1, generator=generator) * 0.08
    noisy = (1 - mix) * images + mix * blurred + sigma * torch.randn(images.shape, generator=generator)
    return noisy.clamp(0, 1)


def soft_targets(rows: list[str], columns: list[str]) -> torch.Tensor:
    """Row-normalised match matrix: every column whose caption equals the row's is a positive."""
    match = torch.tensor([[r == c for c in columns] for r in rows], dtype=torch.float32)
    return match / match.sum(dim=1, keepdim=True)


def paraphrase_loss(captions: torch.Tensor, paraphrases: torch.Tensor,
                    agreement: float = PARAPHRASE_AGREEMENT) -> torch.Tensor:
    """Mean hinge on how far each caption's unit text embedding falls short of `agreement` cosine with its
    paraphrase's (row by row): the text tower reads a relation as a scene, not as word order."""
    return F.relu(agreement - (captions * paraphrases).sum(dim=1)).mean()


def text_margin_loss(captions: torch.Tensor, negatives: torch.Tensor, margin: float = TEXT_MARGIN) -> torch.Tensor:
    """Mean hinge on the cosine of each caption's unit text embedding and its hard negative's (row by row):
    the text tower must tell minimal pairs apart itself, not leave it to tiny differences a large logit
    scale amplifies."""
    return F.relu((captions * negatives).sum(dim=1) - margin).mean()


def train_clip(out_dir: Path, phases=CLIP_PHASES, start: Path | None = None) -> Path:
    """Train (or resume) the world CLIP, phase after phase (each from the previous one's EMA weights), from random
    weights or from the checkpoint `start`; writes the last EMA weights to out_dir/weights/world_clip.safetensors."""
    with torch.random.fork_rng():
        torch.manual_seed(phases[0][1].seed)
        clip = OpenClip(NAME, None if start is None else str(start), torch.device("cpu"))
    model = clip.model

    def phase_loss(config: LoopConfig):
        def loss_fn(rng, generator) -> torch.Tensor:
            return clip_loss(clip, rng, generator, config.batch_size)

        return loss_fn

    for stage, config in phases:
        ema = train_loop(stage, {"clip": model}, phase_loss(config), config, out_dir)
        ema.copy_to(model.parameters())
    weights = out_dir / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, weights / CHECKPOINT.name)
    return weights / CHECKPOINT.name


def clip_loss(clip, rng: np.random.Generator, generator: torch.Generator, batch_size: int) -> torch.Tensor:
    """One batch's loss: contrastive over renders and their captions with hard negatives (soft targets where
    captions coincide), plus the text margin to hard negatives and the paraphrase pull."""
    model = clip.model
    specs = sample_specs(rng, batch_size, CLIP_CATEGORY_WEIGHTS)
    captions = [s.prompt for s in specs]
    negatives = [(i, n.prompt) for i, s in enumerate(specs) for n in hard_negatives(s, rng)]
    texts = captions + [prompt for _, prompt in negatives]
    images = degrade(render_batch(specs, rng), generator)
    image_emb = model.encode_image(clip.preprocess(images), normalize=True)
    text_emb = model.encode_text(clip.tokenizer(texts), normalize=True)
    logits = model.logit_scale.exp() * image_emb @ text_emb.T
    image_to_text = -(soft_targets(captions, texts) * logits.log_softmax(dim=1)).sum(1).mean()
    text_to_image = -(soft_targets(captions, captions) * logits[:, : len(specs)].T.log_softmax(dim=1)).sum(1).mean()
    owners = torch.tensor([i for i, _ in negatives])
    margin = text_margin_loss(text_emb[owners], text_emb[len(specs):])
    related = [s for s in specs if s.relation]
    agreement = paraphrase_loss(*(model.encode_text(clip.tokenizer(p), normalize=True) for p in (
        [s.prompt for s in related], [mirrored(s).prompt for s in related]))) if related else 0.0
    return (image_to_text + text_to_image) / 2 + TEXT_MARGIN_WEIGHT * (margin + agreement)
