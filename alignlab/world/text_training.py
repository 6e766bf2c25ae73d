"""Pre-training of the world's text encoder: read the scene a caption describes, before any image is seen.

SD's text encoder comes pre-trained (CLIP) and frozen; what it separates, the UNet can learn to draw. The
world's first text encoder was learned jointly with the UNet from the diffusion loss alone and came out
blind to what the UNet could not yet draw (left of / right of: 3 % apart). So the world's encoder is now
pre-trained on its own, on the grammar's structure: from every position at and after the end-of-text
token (the positions that have read the whole caption, the majority of the 77 the UNet attends to),
linear heads must name each object's colour and shape, the count and the relation. Then it is frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignlab.world.grammar import COLORS, RELATIONS, SHAPES, Spec, all_specs
from alignlab.world.pretraining import LoopConfig, train_loop

COLOUR_LABELS = (*COLORS, "any", "none")
SHAPE_LABELS = (*SHAPES, "none")
COUNT_LABELS = (0, 1, 2, 3)  # 0: the empty caption
RELATION_LABELS = ("none", *RELATIONS)
HEADS = (COLOUR_LABELS, SHAPE_LABELS, COLOUR_LABELS, SHAPE_LABELS, COUNT_LABELS, RELATION_LABELS)
TEXT = LoopConfig(steps=400, lr=1e-3, warmup=40, ema_decay=0.99, batch_size=128)


def structure_labels(spec: Spec | None) -> list[int]:
    """(colour, shape) of the first and second distinct object, the count, the relation; None: the empty caption."""
    if spec is None:
        return [COLOUR_LABELS.index("none"), SHAPE_LABELS.index("none")] * 2 + [0, 0]
    distinct = list(dict.fromkeys(spec.objects))
    slots = []
    for index in range(2):
        obj = distinct[index] if index < len(distinct) else None
        colour = "none" if obj is None else (obj.color or "any")
        slots += [COLOUR_LABELS.index(colour), SHAPE_LABELS.index(obj.shape if obj else "none")]
    return slots + [len(spec.objects), RELATION_LABELS.index(spec.relation or "none")]


class StructureHeads(torch.nn.Module):
    """Linear heads that name a caption's structure (structure_labels) from a text feature."""

    def __init__(self, width: int):
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(width, len(labels)) for labels in HEADS)

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the heads; features (N, width), labels (N, len(HEADS))."""
        return sum(F.cross_entropy(head(features), labels[:, i]) for i, head in enumerate(self.heads)) / len(HEADS)


def train_text_encoder(text_encoder, tokenizer, out_dir, config: LoopConfig = TEXT) -> None:
    """Train (or resume) `text_encoder` in place on the structure heads; the heads are thrown away."""
    specs: list[Spec | None] = [None, *all_specs()]
    prompts = ["" if s is None else s.prompt for s in specs]
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    after_end = torch.arange(ids.shape[1])[None] >= (ids == tokenizer.eos_token_id).int().argmax(1, keepdim=True)
    labels = torch.tensor([structure_labels(s) for s in specs])
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        heads = StructureHeads(text_encoder.config.hidden_size)

    def loss_fn(rng, generator) -> torch.Tensor:
        rows = torch.from_numpy(rng.integers(len(specs), size=config.batch_size))
        hidden = text_encoder(ids[rows])[0][after_end[rows]]  # (positions, hidden)
        targets = labels[rows][:, None].expand(-1, ids.shape[1], -1)[after_end[rows]]
        return heads.loss(hidden, targets)

    text_encoder.requires_grad_(True)
    ema = train_loop("text", {"text_encoder": text_encoder, "heads": heads}, loss_fn, config, out_dir)
    ema.copy_to(list(text_encoder.parameters()) + list(heads.parameters()))
    text_encoder.requires_grad_(False).eval()
