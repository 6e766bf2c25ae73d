"""Evaluate a model on a list of prompts with FIXED noise: one CPU generator per sample row, seeded by
(seed, row) only, so every evaluation of a run (any round, the CLI afterwards, the base model) draws the
same initial and per-step noise, and no global RNG or training generator is touched."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from alignlab.core.token_spans import ItemBatch
from alignlab.samplers.generation import decode_and_score, sample_prompts

EVAL_STREAM = 0xE7A1  # keeps evaluation keys apart from training's (seed, round, rank, stream, row)


def eval_generator(seed: int, row: int) -> torch.Generator:
    """The generator of evaluation row `row` (independent of the round)."""
    state = np.random.SeedSequence([seed, EVAL_STREAM, row]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> 1))


def select_prompts(prompt_set, split: str = "test", max_prompts: int | None = None) -> tuple[list[str], str]:
    """The first `max_prompts` prompts of `split` -> (prompts, split used); an empty test split falls
    back to train."""
    if split not in ("test", "train"):
        from alignlab.errors import ConfigError

        raise ConfigError(f"eval.split must be test or train, got {split!r}")
    pool, used = (prompt_set.test, "test") if split == "test" else (prompt_set.train, "train")
    if not pool:
        pool, used = prompt_set.train, "train"
    return list(pool[:max_prompts] if max_prompts else pool), used


@contextmanager
def _eval_mode(module: torch.nn.Module):
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


@torch.no_grad()
def evaluate_prompts(model, sampler, reward, prompts: list[str], samples_per_prompt: int = 2,
                     batch_size: int = 8, seed: int = 0, prompt_set=None) -> dict:
    """Sample `samples_per_prompt` images per prompt (rows of a prompt consecutive), decode and score them.

    Returns {"reward_mean", "reward_std", "per_prompt": {prompt: mean}, "images" (N, 3, H, W) on the CPU,
    "prompts" (one per row), "rewards" (list, one per row)}. Samplers that mask items (sampler=asyn) get
    the prompts' items from `prompt_set` (none when it is not given)."""
    if not prompts:
        raise ValueError("evaluate_prompts needs at least one prompt")
    rows = [p for p in prompts for _ in range(samples_per_prompt)]
    needs_items = sampler.needs_items
    rewards, images = [], []
    with _eval_mode(model), model.autocast():
        negative = model.encode_prompts([""])
        for first in range(0, len(rows), batch_size):
            chunk = rows[first : first + batch_size]
            generators = [eval_generator(seed, row) for row in range(first, first + len(chunk))]
            items = None
            if needs_items:
                items = ItemBatch.build(model.tokenizer, chunk, [prompt_set.items_for(p) if prompt_set is not None
                                                                 else [] for p in chunk])
            traj = sample_prompts(model, sampler, chunk, negative, generators, items)
            decoded, scores = decode_and_score(model, reward, traj, chunk)
            rewards.append(scores.cpu())
            images.append(decoded.cpu())
    scores = torch.cat(rewards)
    per_prompt = {p: float(scores[i * samples_per_prompt : (i + 1) * samples_per_prompt].mean())
                  for i, p in enumerate(prompts)}
    return {
        "reward_mean": float(scores.mean()),
        "reward_std": float(scores.std(unbiased=False)),
        "per_prompt": per_prompt,
        "images": torch.cat(images),
        "prompts": rows,
        "rewards": scores.tolist(),
    }


def pairwise_diversity(embeddings: torch.Tensor, samples_per_prompt: int) -> list[float]:
    """Per prompt (its rows consecutive, as evaluate_prompts orders them), the mean cosine distance 1 - cos
    over all pairs of its images' L2-normalised embeddings: the diversity B²-DiffuRL reports, 0 when every
    image of a prompt looks the same to the embedding."""
    if samples_per_prompt < 2:
        raise ValueError("diversity needs at least 2 samples per prompt")
    groups = embeddings.float().reshape(-1, samples_per_prompt, embeddings.shape[-1])
    similarity = groups @ groups.transpose(1, 2)
    off_diagonal = similarity.sum(dim=(1, 2)) - similarity.diagonal(dim1=1, dim2=2).sum(dim=1)
    return (1 - off_diagonal / (samples_per_prompt * (samples_per_prompt - 1))).tolist()
