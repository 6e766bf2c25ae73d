"""The model config's speed options: gradient checkpointing that keeps alignlab's hooks, and torch.compile.

diffusers' own checkpointing recomputes a block in the backward pass with whatever hooks are registered
THEN. alignlab's per-pixel timesteps (core/per_pixel_unet.py) are forward hooks that are removed as soon
as the UNet call returns, so the recomputed block would lack its time term and the gradients of every
asynchronous step would be silently wrong. Here the recomputation runs with the hooks the forward ran with.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch.utils.checkpoint import checkpoint

from alignlab.errors import ConfigError

# the per-module hook tables a forward consults (torch.nn.Module._call_impl)
_HOOK_TABLES = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                "_forward_hooks_with_kwargs", "_forward_hooks_always_called")


def configure_speed(unet: torch.nn.Module, gradient_checkpointing: bool = False, compile: bool | str = False) -> None:
    """Apply model.gradient_checkpointing and model.compile (False, True for inductor, or a torch.compile
    backend name) to the UNet, in place: the module and its state-dict keys stay as they were."""
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing(checkpoint_keeping_hooks)
    if compile is True:
        unet.compile()
    elif compile:
        from torch._dynamo import list_backends

        if compile not in list_backends(exclude_tags=()):
            raise ConfigError(f"model.compile must be false, true or a torch.compile backend "
                              f"({', '.join(list_backends())}), got {compile!r}")
        unet.compile(backend=compile)


def checkpoint_keeping_hooks(module: torch.nn.Module, *args):
    """diffusers' checkpoint function (non-reentrant), whose recomputation sees the forward's hooks. Under
    torch.compile the hooks are traced into the graph that is recomputed, so plain checkpointing is exact."""
    if torch.compiler.is_compiling():
        return checkpoint(module.__call__, *args, use_reentrant=False)
    tables = [(m, {name: dict(getattr(m, name)) for name in _HOOK_TABLES}) for m in module.modules()]
    return checkpoint(module.__call__, *args, use_reentrant=False,
                      context_fn=lambda: (nullcontext(), _hooks_restored(tables)))


@contextmanager
def _hooks_restored(tables) -> Iterator[None]:
    current = [(m, {name: getattr(m, name) for name in _HOOK_TABLES}) for m, _ in tables]
    for module, saved in tables:
        for name, hooks in saved.items():
            setattr(module, name, type(getattr(module, name))(hooks))
    try:
        yield
    finally:
        for module, tables_now in current:
            for name, hooks in tables_now.items():
                setattr(module, name, hooks)
