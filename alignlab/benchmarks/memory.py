"""A call's own peak memory, for the benchmarks (alignlab.benchmarks, experiments/peers).

Only the standard library at import (torch is looked up where a caller has imported it): the peer
D-Fusion worker imports it beside a vendored diffusers that must not meet the installed one.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_mib(fn: Callable[[], object]) -> float:
    """Peak resident memory of one call of fn above the level before it, MiB (Linux). Free heap pages are
    handed back first (malloc_trim) and the kernel's high-water mark is reset to the current level, so the
    figure is the call's own, not the process's peak so far. NaN where the kernel offers no resettable
    high-water mark (not Linux, or /proc read-only): the call still runs, the timings stand."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        before = _proc_status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
    except OSError:
        before = None
    fn()
    return float("nan") if before is None else (_proc_status_kib("VmHWM") - before) / 1024


def peak_cuda_mib(fn: Callable[[], object]) -> float:
    """Peak CUDA memory allocated during one call of fn above what was allocated before it, MiB."""
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def peak_memory(fn: Callable[[], object]) -> float:
    """The call's own peak where its work runs: CUDA memory once the process uses a GPU, else resident memory."""
    torch = sys.modules.get("torch")  # imported by whoever uses a GPU; not by this module
    if torch is not None and torch.cuda.is_initialized():
        return peak_cuda_mib(fn)
    return peak_mib(fn)


def peaks(fns: dict[str, Callable[[], object]], rounds: int = 2,
          remote: dict[str, Callable[[], float]] | None = None) -> dict[str, float]:
    """peak_memory of each function, alternating `rounds` times and keeping the larger (call it after a warm-up,
    so lazy initialisation is not counted). `remote[name]()` returns the peak of a call that runs in another
    process instead."""
    remote = remote or {}
    mem: dict[str, float] = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            peak = remote[name]() if name in remote else peak_memory(fn)
            mem[name] = max(mem[name], peak) if name in mem else peak
    return mem
