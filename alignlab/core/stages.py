"""B²-DiffuRL's per-stage bookkeeping (docs/b2diffurl.md): the backward progressive schedule,
per-prompt z-scores over a bounded history of stages, and the choice of siblings to train on."""

from __future__ import annotations

from collections import deque

import torch

EPS = 1e-8  # B²-DiffuRL's (DDPO's tracker uses 1e-6)


def split_step(stage: int, low: int, high: int, num_stages: int) -> int:
    """How many final denoising steps are branched and trained at `stage`: L + floor(i (R − L + 1) / S).

    The trained tail grows from L to R steps over S stages; stages past S stay at R."""
    level = stage * (high - low + 1) // num_stages
    return low + min(level, high - low)


class StageZScores:
    """Per-prompt z-scores of a stage's rewards against the pooled rewards of that prompt in this stage and
    up to `history_cnt` earlier stages (unbiased std + 1e-8), as the official selection step computes them.

    The history is a window of whole stages (a prompt absent from a stage simply has nothing in it), and it
    is training state: see state_dict()."""

    def __init__(self, history_cnt: int = 8):
        if history_cnt < 0:
            raise ValueError("history_cnt must be >= 0")
        self.history: deque[dict[str, list[float]]] = deque(maxlen=history_cnt)

    def update(self, prompts: list[str], rewards: torch.Tensor) -> torch.Tensor:
        """z-scores of `rewards` (one per prompt entry); then this stage joins the history."""
        values = rewards.detach().double().cpu()
        stage: dict[str, list[float]] = {}
        for prompt, value in zip(prompts, values.tolist(), strict=False):
            stage.setdefault(prompt, []).append(value)
        z = torch.empty_like(values)
        for prompt, current in stage.items():
            pooled = torch.tensor([r for past in self.history for r in past.get(prompt, [])] + current,
                                  dtype=torch.float64)
            rows = torch.tensor([p == prompt for p in prompts])
            z[rows] = (values[rows] - pooled.mean()) / (pooled.std() + EPS)
        self.history.append(stage)
        return z.to(rewards.device, torch.float32)

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque(state["history"], maxlen=self.history.maxlen)


def select_siblings(z: torch.Tensor, pos_threshold: float, neg_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per family (one row of `z`, its K siblings): the best sibling if its z >= pos_threshold and the worst
    if its z < neg_threshold, so at most two trajectories per shared prefix are trained.

    Returns the kept rows of the flattened (families · K) batch, ascending, and whether each is the best."""
    families, k = z.shape
    first = torch.arange(families, device=z.device) * k
    best, worst = z.max(dim=1), z.min(dim=1)
    keep_best, keep_worst = best.values >= pos_threshold, worst.values < neg_threshold
    rows = torch.cat([(first + best.indices)[keep_best], (first + worst.indices)[keep_worst]])
    is_best = torch.arange(len(rows), device=z.device) < int(keep_best.sum())
    order = rows.argsort()
    return rows[order], is_best[order]
