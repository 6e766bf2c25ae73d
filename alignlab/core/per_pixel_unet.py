"""Per-pixel timesteps in any diffusers UNet2DConditionModel, without forking diffusers.

Only ResNet blocks consume the time embedding. Called with a (B, h, w) map, `PerPixelUNet` makes each
ResnetBlock2D adds time_emb_proj(act(emb(t))) where t is the latent timestep map subsampled to the
block's resolution with a stride (the top-left pixel of each block, as the official code does). The
embedding and each block's projection are computed once per DISTINCT timestep in the map (a handful:
one per mask region) and gathered, not once per pixel. Two forward hooks per block do it: one zeroes
the block's usual (per-sample) time term, one adds the spatial term right after `conv1`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers.models.resnet import ResnetBlock2D


def time_embedding(unet, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """emb(t) for a 1-D tensor of timesteps, as UNet2DConditionModel.forward computes it."""
    emb = unet.time_embedding(unet.time_proj(timesteps).to(dtype))
    return unet.time_embed_act(emb) if unet.time_embed_act is not None else emb


class PerPixelUNet:
    """A UNet callable with (B, h, w) timestep maps as well as scalar or (B,) timesteps, so code written
    for the synchronous sampler (guided_noise, step_log_prob) runs per-pixel maps unchanged. B is the
    UNet's batch (doubled under classifier-free guidance); the map is at latent resolution."""

    def __init__(self, unet):
        config = unet.config
        if config.class_embed_type is not None or config.num_class_embeds is not None or config.addition_embed_type:
            raise ValueError("per-pixel timesteps support UNets without class or added embeddings (SD 1.x / 2.x)")
        self.unet = unet
        self.blocks = [m for m in unet.modules() if isinstance(m, ResnetBlock2D) and m.time_emb_proj is not None]
        for block in self.blocks:
            if block.time_embedding_norm != "default":
                raise ValueError(f"per-pixel timesteps need ResNet blocks with time_embedding_norm='default', "
                                 f"got {block.time_embedding_norm!r}")

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs):
        if timestep.ndim < 3:
            return self.unet(sample, timestep, **kwargs)
        with self.timestep_map(timestep, sample.dtype):
            return self.unet(sample, timestep.flatten(1)[:, 0], **kwargs)  # placeholder: the hooks set the time

    @contextmanager
    def timestep_map(self, timesteps: torch.Tensor, dtype: torch.dtype) -> Iterator[None]:
        """Within the context, every ResNet block adds the time term of its strided sub-map of `timesteps`."""
        values, index = torch.unique(timesteps, return_inverse=True)
        emb = time_embedding(self.unet, values, dtype)

        def zero(module, args, output):
            return torch.zeros_like(output)

        def add_time(block, output):
            step_h, step_w = index.shape[-2] // output.shape[-2], index.shape[-1] // output.shape[-1]
            if index.shape[-2] != step_h * output.shape[-2] or index.shape[-1] != step_w * output.shape[-1]:
                raise ValueError(f"a {tuple(output.shape[-2:])} ResNet does not tile the "
                                 f"{tuple(index.shape[-2:])} timestep map")
            projected = block.time_emb_proj.forward(emb if block.skip_time_act else block.nonlinearity(emb))
            return output + projected[index[:, ::step_h, ::step_w]].permute(0, 3, 1, 2).to(output.dtype)

        handles = []
        for block in self.blocks:  # .forward above bypasses the zeroing hook
            handles.append(block.time_emb_proj.register_forward_hook(zero))
            handles.append(block.conv1.register_forward_hook(
                lambda module, args, output, block=block: add_time(block, output)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
