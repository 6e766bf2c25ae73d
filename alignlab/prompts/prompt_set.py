"""A prompt set: the train prompts a method samples from and the held-out test prompts.

A prompt may carry its ITEMS, the words whose image regions AsynDM and D-Fusion mask, each with
AsynDM's curvature k and D-Fusion's mask threshold (given per item or once for the prompt) and, as the
papers' prompt files give it, the word's index among the prompt's words:
    - a cat eating a sandwich                                      # no items
    - {prompt: a cat eating a sandwich, items: [cat, sandwich], k: 0.7}
    - {prompt: a woolen hat, items: [{word: woolen, k: 0.5, threshold: 0.01, index: 1}]}

An item's attention is read from the tokens its word became (`item_tokens: spans`, the default);
`item_tokens: official` reads the one token at index + 1 as the official code does, which is another
token when an earlier word is split by the tokenizer ("1960s", "cross-section").
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import yaml

from alignlab.core.timestep_schedules import check_k
from alignlab.core.token_spans import Item, find_word, not_found
from alignlab.errors import ConfigError

_ENTRY_KEYS = {"prompt", "items", "k", "threshold"}
_ITEM_KEYS = {"word", "k", "threshold", "index"}
ITEM_TOKENS = ("spans", "official")


def _parse_entry(entry, name: str, one_token: bool = False) -> tuple[str, list[Item]]:
    """A prompt string, or a mapping with the prompt and its items -> (prompt, items)."""
    if not isinstance(entry, Mapping):
        return str(entry), []
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise ConfigError(f"prompt set '{name}': unknown key(s) {sorted(unknown)} in a prompt entry "
                          f"(allowed: {sorted(_ENTRY_KEYS)})")
    prompt, items = str(entry.get("prompt") or ""), []
    for spec in entry.get("items") or []:
        spec = spec if isinstance(spec, Mapping) else {"word": spec}
        unknown = set(spec) - _ITEM_KEYS
        if unknown:
            raise ConfigError(f"prompt set '{name}': unknown key(s) {sorted(unknown)} in an item of '{prompt}' "
                              f"(allowed: {sorted(_ITEM_KEYS)})")
        item = Item(str(spec.get("word")), spec.get("k", entry.get("k")), spec.get("threshold", entry.get("threshold")),
                    spec.get("index"), one_token)
        if find_word(prompt, item.word, item.index) is None:
            raise ConfigError(f"prompt set '{name}': {not_found(prompt, item.word, item.index)}")
        if one_token and item.index is None:
            raise ConfigError(f"prompt set '{name}': item_tokens=official needs each item's word index, and item "
                              f"'{item.word}' of '{prompt}' has none")
        if item.k is not None:
            try:
                check_k(item.k)
            except ConfigError as error:
                raise ConfigError(f"prompt set '{name}', item '{item.word}' of '{prompt}': {error}") from None
        items.append(item)
    return prompt, items


class PromptSet:
    def __init__(self, train: list, test: list | None = None, name: str = "prompts", item_tokens: str = "spans",
                 judge=None):
        for split, entries in (("train", train), ("test", test)):
            if isinstance(entries, (str, Mapping)):
                raise ConfigError(f"prompt set '{name}': {split} must be a list of prompts, got {entries!r}")
        if item_tokens not in ITEM_TOKENS:
            raise ConfigError(f"prompt set '{name}': item_tokens must be one of {list(ITEM_TOKENS)}, "
                              f"got {item_tokens!r}")
        one_token = item_tokens == "official"
        train = [_parse_entry(e, name, one_token) for e in train or []]
        test = [_parse_entry(e, name, one_token) for e in test or []]
        self._items = {prompt: items for prompt, items in train + test if items}
        train, test = [prompt for prompt, _ in train], [prompt for prompt, _ in test]
        if not train:
            raise ConfigError(f"prompt set '{name}' has no train prompts: give prompts.train a non-empty list")
        blank = [p for p in train + test if not p.strip()]
        if blank:
            raise ConfigError(f"prompt set '{name}' contains an empty prompt")
        shared = sorted(set(train) & set(test))
        if shared:
            raise ConfigError(f"prompt set '{name}' lists {shared} in both train and test: test prompts are held out")
        self.train, self.test, self.name = train, test, name
        self.judge = judge  # the gold judge of these prompts' images, if any (alignlab.eval.judge)

    def sample(self, count: int, generator: torch.Generator, split: str = "train") -> list[str]:
        """`count` prompts drawn uniformly with replacement (DDPO draws a random prompt per image)."""
        pool = self.train if split == "train" else self.test
        picks = torch.randint(len(pool), (count,), generator=generator)
        return [pool[i] for i in picks.tolist()]

    def items_for(self, prompt: str) -> list[Item]:
        """The prompt's items (empty when the set gives none)."""
        return self._items.get(prompt, [])


def _yaml_problem(error: yaml.YAMLError) -> str:
    """The parser's complaint and where, in one line (PyYAML's own message quotes the source over lines)."""
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return " ".join(str(error).split())
    return f"{error.problem} at line {mark.line + 1}, column {mark.column + 1}"


def load_prompt_file(path: str, name: str | None = None) -> PromptSet:
    """A .txt file (one train prompt per line) or a .yaml/.json file with `train:` and `test:` lists."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"prompts.path: no such file '{path}'")
    if file.suffix == ".txt":
        return PromptSet([line for line in file.read_text().splitlines() if line.strip()], name=name or file.stem)
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"prompts.path: '{path}' is not valid YAML or JSON: {_yaml_problem(error)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"prompts.path: '{path}' must hold a mapping with 'train' and 'test' lists")
    return PromptSet(data.get("train"), data.get("test"), name=name or file.stem)
