"""Attention hooks: pick UNet attention layers by kind and resolution, swap their processors, and
capture cross-attention probabilities (AsynDM's and D-Fusion's masks).

Only the captured layers compute softmax(QKᵀ·scale) explicitly; every layer's output comes from
diffusers' SDPA processor, so no 64×64 self-attention map is ever materialised. Another processor
(D-Fusion's K/V blending, say) is installed the same way with `attention_processors`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers.models.attention_processor import AttnProcessor2_0


def attention_layers(unet, cross: bool = True) -> dict[str, torch.nn.Module]:
    """The UNet's cross-attention (or self-attention) modules, by name."""
    return {name: module for name, module in unet.named_modules()
            if hasattr(module, "set_processor") and getattr(module, "is_cross_attention", None) is cross}


def layer_resolution(unet, name: str, latent_size: tuple[int, int]) -> tuple[int, int]:
    """The token grid of an attention layer: down_blocks.i works at latent / 2^i, up_blocks.i at
    latent / 2^(levels-1-i), the mid block at the coarsest level (UNet2DConditionModel's layout)."""
    levels = len(unet.config.block_out_channels)
    block, _, rest = name.partition(".")
    if block == "down_blocks":
        level = int(rest.split(".")[0])
    elif block == "up_blocks":
        level = levels - 1 - int(rest.split(".")[0])
    else:  # mid_block
        level = levels - 1
    return latent_size[0] // 2**level, latent_size[1] // 2**level


CAPTURE_CELLS = 16  # the attention maps the papers' masks come from: 16×16 (SD's 64×64 latent / 4)


def capture_layers(unet, latent_size: tuple[int, int], downscale: int | None = None):
    """The cross-attention layers at the resolution nearest latent / downscale (None: nearest 16×16, which is
    latent / 4 in SD, 5 layers, and the world's full 16×16 latent), and that resolution. Nearest, because
    small UNets may have no layer at exactly it."""
    if downscale is not None and downscale < 1:
        raise ValueError(f"the capture downscale must be >= 1, got {downscale}")
    layers = attention_layers(unet, cross=True)
    if not layers:
        raise ValueError("this UNet has no cross-attention layers to capture")
    sizes = {name: layer_resolution(unet, name, latent_size) for name in layers}
    target = CAPTURE_CELLS if downscale is None else latent_size[0] / downscale
    size = min(set(sizes.values()), key=lambda hw: (abs(hw[0] - target), hw[0]))
    return {name: layers[name] for name in layers if sizes[name] == size}, size


@contextmanager
def attention_processors(layers: dict[str, torch.nn.Module], processor) -> Iterator[None]:
    """Run `layers` with `processor` for the duration; all other layers keep theirs."""
    previous = {name: module.processor for name, module in layers.items()}
    for module in layers.values():
        module.set_processor(processor)
    try:
        yield
    finally:
        for name, module in layers.items():
            module.set_processor(previous[name])


class AttentionStore:
    """Head-averaged attention probabilities of the captured layers, averaged over layers.

    With classifier-free guidance (`conditional_half=True`) the UNet batch is [uncond; cond] and only
    the conditional half is kept.
    """

    def __init__(self, conditional_half: bool = True):
        self.conditional_half = conditional_half
        self.reset()

    def reset(self) -> None:
        self.total: torch.Tensor | None = None
        self.layers = 0

    def add(self, probs: torch.Tensor) -> None:
        """probs: (B, heads, queries, keys) of one layer."""
        if self.conditional_half:
            probs = probs[probs.shape[0] // 2 :]
        probs = probs.mean(dim=1)
        self.total = probs if self.total is None else self.total + probs
        self.layers += 1

    def mean(self) -> torch.Tensor:
        """(B, queries, keys), the mean over heads and layers."""
        if self.total is None:
            raise RuntimeError("no attention was captured: was the UNet run inside the capture?")
        return self.total / self.layers


def attention_probs(attn, query: torch.Tensor, key: torch.Tensor, attention_mask=None) -> torch.Tensor:
    """softmax(QKᵀ/√d) of a transformer attention layer, (B, heads, queries, keys) in fp32, from the
    outputs of its to_q and to_k, with the head split, norms, scale and mask SDPA gets."""
    batch, heads = query.shape[0], attn.heads
    query = query.view(batch, -1, heads, query.shape[-1] // heads).transpose(1, 2)
    key = key.view(batch, -1, heads, key.shape[-1] // heads).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    scores = query.float() @ key.float().transpose(-1, -2) * query.shape[-1] ** -0.5
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch)
        scores = scores + mask.view(batch, heads, -1, mask.shape[-1]).float()
    return scores.softmax(dim=-1)


class CaptureProcessor:
    """Runs diffusers' SDPA processor and records the layer's attention probabilities into an
    AttentionStore, from the very query and key projections SDPA used (caught by hooks on to_q and
    to_k, so they are not computed twice: on small UNets these extra calls cost more than the maths).
    Capturing never changes what the UNet computes, so steps sampled with capture re-score exactly
    without it."""

    def __init__(self, store: AttentionStore):
        self.store = store
        self.sdpa = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError("attention capture supports transformer attention on (B, tokens, C) inputs only")
        projections = {}

        def catch(name):
            return lambda module, args, output: projections.__setitem__(name, output)

        handles = [attn.to_q.register_forward_hook(catch("query")), attn.to_k.register_forward_hook(catch("key"))]
        try:
            output = self.sdpa(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        self.store.add(attention_probs(attn, projections["query"], projections["key"], attention_mask))
        return output
