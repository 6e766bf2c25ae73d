"""Resumable, seeded pre-training loops for the world model and the world CLIP.

Every step draws its data from generators seeded by (seed, stage, step), so a run resumed from a
checkpoint computes exactly the batches an uninterrupted run would. Checkpoints are written to a
temporary file and renamed, so an interrupted save never destroys the previous one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

import numpy as np
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from alignlab.training.atomic import replace_atomically
from alignlab.world.grammar import CATEGORIES, Spec, all_specs

# Pre-training mixes the categories like a caption corpus would: more simple than composite scenes.
CATEGORY_WEIGHTS = {"single_object": 0.25, "two_objects": 0.1, "counting": 0.2, "colour_attr": 0.2, "position": 0.25}


@cache
def _pools() -> tuple[list[Spec], ...]:
    """Every category's specs, built once (sample_specs runs on every pre-training step)."""
    return tuple(all_specs([category]) for category in CATEGORIES)


def sample_specs(rng: np.random.Generator, count: int, category_weights: dict = CATEGORY_WEIGHTS) -> list[Spec]:
    """`count` specs: a category by `category_weights`, then a uniform prompt of it (train and test alike)."""
    pools = _pools()
    weights = np.array([category_weights[c] for c in CATEGORIES])
    picks = rng.choice(len(CATEGORIES), size=count, p=weights / weights.sum())
    return [pools[c][int(rng.integers(len(pools[c])))] for c in picks]


def step_generators(seed: int, stage: str, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The data (numpy) and noise (torch) generators of one step: a function of (seed, stage, step) only."""
    sequence = np.random.SeedSequence([seed, sum(stage.encode()), step])
    torch_seed = int(sequence.generate_state(1, dtype=np.uint64)[0] % (2**63))
    return np.random.default_rng(sequence), torch.Generator().manual_seed(torch_seed)


@dataclass
class LoopConfig:
    steps: int
    lr: float
    warmup: int
    ema_decay: float
    batch_size: int
    seed: int = 0
    save_every: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0


def train_loop(
    stage: str,
    modules: dict[str, torch.nn.Module],
    loss_fn: Callable[[np.random.Generator, torch.Generator], torch.Tensor],
    config: LoopConfig,
    out_dir: Path,
) -> EMAModel:
    """AdamW + warmup/cosine schedule + EMA over `modules`' parameters, checkpointed to out_dir/<stage>.ckpt.

    Returns the EMA (the weights to ship); losses go to out_dir/<stage>_loss.jsonl.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    params = [p for module in modules.values() for p in module.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup, config.steps)
    ema = EMAModel(params, decay=config.ema_decay)
    checkpoint, log = out_dir / f"{stage}.ckpt", out_dir / f"{stage}_loss.jsonl"
    start = 0
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        ema.load_state_dict(state["ema"])
        start = state["step"]
    for module in modules.values():
        module.train()
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc=f"world {stage}")
    running = None
    with log.open("a") as log_file:
        for step in bar:
            loss = loss_fn(*step_generators(config.seed, stage, step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            schedule.step()
            ema.step(params)
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            bar.set_postfix(loss=f"{running:.4f}")
            if (step + 1) % 10 == 0:
                row = {"step": step + 1, "loss": loss.item(), "lr": schedule.get_last_lr()[0]}
                log_file.write(json.dumps(row) + "\n")
            if (step + 1) % config.save_every == 0 or step + 1 == config.steps:
                log_file.flush()
                state = {
                    "step": step + 1, "modules": {n: m.state_dict() for n, m in modules.items()},
                    "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "ema": ema.state_dict(),
                }
                replace_atomically(checkpoint, partial(torch.save, state))
    for module in modules.values():
        module.eval()
    return ema
