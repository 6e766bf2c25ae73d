"""Item words -> token spans with the model's own tokenizer, and a batch's items as tensors.

AsynDM and D-Fusion read the cross-attention columns of a prompt's ITEMS (the words whose regions
matter). Their official code gives word positions and assumes one token per word, which is wrong for
words the BPE splits ("woolen" -> woo·len, "1960s" -> 1·9·6·0·s). Here each item word is located in
the prompt and mapped to the tokens it became; an item's attention is the mean over its span.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

import torch

from alignlab.errors import ConfigError


@dataclass(frozen=True)
class Item:
    """A prompt-related word or phrase: AsynDM's curvature k, D-Fusion's absolute mask threshold.

    `index` is the word's position among the prompt's words (runs of letters and digits, counted from 0),
    as the papers' prompt files give it; it picks one occurrence of a repeated word. `one_token` reproduces
    the official code's indexing: the single token at index + 1, right only when no earlier word is split.
    """

    word: str
    k: float | None = None
    threshold: float | None = None
    index: int | None = None
    one_token: bool = False


def prompt_words(prompt: str) -> list[re.Match]:
    """The prompt's words as the official prompt files count them: runs of letters and digits."""
    return list(re.finditer(r"\w+", prompt))


def find_word(prompt: str, word: str, index: int | None = None) -> tuple[int, int] | None:
    """Character span of `word` in `prompt`: its first whole-word, case-insensitive occurrence, or, given
    `index`, the index-th word when that is `word` (None when it is not)."""
    if index is not None:
        words = prompt_words(prompt)
        found = words[index] if 0 <= index < len(words) else None
        return found.span() if found and found.group().lower() == word.strip().lower() else None
    match = re.search(rf"(?<!\w){re.escape(word.strip())}(?!\w)", prompt, flags=re.IGNORECASE)
    return match.span() if match else None


def not_found(prompt: str, word: str, index: int | None = None) -> str:
    """The sentence for an item word that find_word does not find."""
    where = "" if index is None else f" at word index {index}"
    return f"item '{word}' does not occur as a word{where} in the prompt '{prompt}'"


def token_span(tokenizer, prompt: str, word: str, index: int | None = None) -> range:
    """Positions of `word`'s tokens in the encoded prompt (position 0 is the start token).

    CLIP's BPE works on pre-tokens that never cross a word boundary, so the tokens of the prompt up
    to the word's start and up to its end delimit exactly the tokens the word became.
    """
    span = find_word(prompt, word, index)
    if span is None:
        raise ConfigError(not_found(prompt, word, index))

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    first, last = 1 + count(prompt[: span[0]]), 1 + count(prompt[: span[1]])
    if last > tokenizer.model_max_length - 1:
        raise ConfigError(f"item '{word}' lies beyond the tokenizer's {tokenizer.model_max_length}-token "
                          f"limit in the prompt '{prompt}'")
    return range(first, last)


@dataclass
class ItemBatch:
    """The items of a batch of prompts, padded to the largest item count I of the batch."""

    weights: torch.Tensor  # (B, I, L): 1/len(span) on an item's tokens, so attention @ weightsᵀ = span mean
    k: torch.Tensor  # (B, I) AsynDM curvature (nan: not given; 0 for padding)
    threshold: torch.Tensor  # (B, I) D-Fusion absolute threshold (nan: not given)
    valid: torch.Tensor  # (B, I) False for padding
    last: torch.Tensor  # (B,) the item with the largest token index (-1: the prompt has no items)

    @staticmethod
    def build(tokenizer, prompts: list[str], items: list[list[Item]]) -> ItemBatch:
        length = tokenizer.model_max_length
        count = max([len(row) for row in items] + [1])
        weights = torch.zeros(len(prompts), count, length)
        k = torch.zeros(len(prompts), count)
        threshold = torch.full((len(prompts), count), math.nan)
        valid = torch.zeros(len(prompts), count, dtype=torch.bool)
        last = torch.full((len(prompts),), -1, dtype=torch.long)
        for b, (prompt, row) in enumerate(zip(prompts, items, strict=False)):
            ends = []
            for i, item in enumerate(row):
                span = (range(item.index + 1, item.index + 2) if item.one_token
                        else token_span(tokenizer, prompt, item.word, item.index))
                weights[b, i, span.start : span.stop] = 1.0 / len(span)
                k[b, i] = math.nan if item.k is None else item.k
                threshold[b, i] = math.nan if item.threshold is None else item.threshold
                valid[b, i] = True
                ends.append(span.stop)
            if ends:
                last[b] = max(range(len(ends)), key=ends.__getitem__)
        return ItemBatch(weights, k, threshold, valid, last)

    def index(self, rows) -> ItemBatch:
        return ItemBatch(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def to(self, device) -> ItemBatch:
        return ItemBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})
