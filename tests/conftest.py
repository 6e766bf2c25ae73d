"""Shared fixtures: tiny random-weight SD look-alikes (built once per session)."""

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import alignlab  # noqa: E402,F401  (torchvision repair first)
from alignlab.models import build_tiny  # noqa: E402
import lightning  # noqa: E402,F401  (its import binds a log handler to sys.stderr: the real one, not the captured
#                  stream of whichever test imported it first, which is closed when the next test logs)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub downloads and an empty hub cache (huggingface_hub reads its settings once, at import)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


@pytest.fixture(scope="session")
def tiny_model():
    """Frozen tiny model: tests must not modify it (use `fresh_tiny` to train)."""
    torch.manual_seed(0)
    return build_tiny()


@pytest.fixture
def fresh_tiny():
    return build_tiny()


@pytest.fixture(scope="session")
def embeds(tiny_model):
    prompts = ["a red circle", "two blue squares", "a cat", "a dog"]
    return prompts, tiny_model.encode_prompts(prompts), tiny_model.encode_prompts([""])
