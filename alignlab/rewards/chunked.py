"""What the model-based rewards share: load on first call, score in chunks of `batch_size`."""

from __future__ import annotations

import torch


class ChunkedReward:
    """Subclasses set `batch_size` and `device` (None: the images' device) and implement
    `_load(device)` (weights are read only when first needed, so composing configs stays cheap) and
    `_score(images, prompts)` for one chunk."""

    _loaded = False

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if len(prompts) != len(images):
            raise ValueError(f"Got {len(images)} images but {len(prompts)} prompts.")
        self.load(images.device)
        scores = [self._score(images[rows], prompts[rows]) for rows in self.chunks(len(images))]
        return torch.cat(scores).float().to(images.device)

    def chunks(self, count: int) -> list[slice]:
        """Slices of `count` rows, batch_size at a time: what one forward pass of the scorer takes."""
        return [slice(start, start + self.batch_size) for start in range(0, count, self.batch_size)]

    def load(self, device: torch.device) -> None:
        """Load the weights on first use: on `self.device`, else the given (the images') device."""
        if not self._loaded:
            self._load(torch.device(self.device) if self.device else device)
            self._loaded = True


def preload(reward, device) -> None:
    """Read a reward's weights now rather than at its first call: a missing or unreachable checkpoint then
    stops a run before it samples anything. Rewards without weights have no `load`."""
    load = getattr(reward, "load", None)
    if load is not None:
        load(torch.device(device))
