"""A prompt set: the train prompts a method samples from and the held-out test prompts."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from alignlab.errors import ConfigError


class PromptSet:
    def __init__(self, train: list[str], test: list[str] | None = None, name: str = "prompts"):
        train, test = [str(p) for p in train or []], [str(p) for p in test or []]
        if not train:
            raise ConfigError(f"prompt set '{name}' has no train prompts: give prompts.train a non-empty list")
        blank = [p for p in train + test if not p.strip()]
        if blank:
            raise ConfigError(f"prompt set '{name}' contains an empty prompt")
        self.train, self.test, self.name = train, test, name

    def sample(self, count: int, generator: torch.Generator, split: str = "train") -> list[str]:
        """`count` prompts drawn uniformly with replacement (DDPO draws a random prompt per image)."""
        pool = self.train if split == "train" else self.test
        picks = torch.randint(len(pool), (count,), generator=generator)
        return [pool[i] for i in picks.tolist()]


def load_prompt_file(path: str, name: str | None = None) -> PromptSet:
    """A .txt file (one train prompt per line) or a .yaml/.json file with `train:` and `test:` lists."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"prompts.path: no such file '{path}'")
    if file.suffix == ".txt":
        return PromptSet([line for line in file.read_text().splitlines() if line.strip()], name=name or file.stem)
    data = yaml.safe_load(file.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"prompts.path: '{path}' must hold a mapping with 'train' and 'test' lists")
    return PromptSet(data.get("train"), data.get("test"), name=name or file.stem)
