"""Shared bits of the peer benchmarks: single-thread setup, interleaved timing, per-call peak memory.

Time: median of interleaved repeats after a warm-up, in this process, default malloc.
Memory: measured in a child process (the same script re-run with PEER_BENCH_MEMORY=1) where glibc
is told to mmap every block >= 64 KiB (MALLOC_MMAP_THRESHOLD_), so freed tensors leave the resident
set at once. Before each call the kernel's resident high-water mark is reset (/proc/self/clear_refs);
a call's peak is VmHWM after it minus VmRSS before it, in MiB (a warm-up call first). That malloc
setting slows allocation-heavy code (page faults), which is why time is not measured there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
MEMORY_MODE = os.environ.get("PEER_BENCH_MEMORY") == "1"


def single_thread() -> None:
    """Re-exec once with THREADS in the environment (read at library load), then 1 torch thread."""
    if any(os.environ.get(k) != v for k, v in THREADS.items()):
        os.environ.update(THREADS)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    import torch

    torch.set_num_threads(1)


def arguments(batch: int, repeats: int) -> argparse.ArgumentParser:
    """The options every peer script takes; a script adds its own."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkout", required=True, help="a clone of the official repository")
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=repeats)
    return parser


def measure(fns: dict, repeats: int, remote_peaks: dict | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """(median times, peak MiB) per function. In the memory child: print the peaks and exit.
    `remote_peaks[name]()` returns the peak of a function that runs in another process (a worker)."""
    if MEMORY_MODE:
        from alignlab.benchmarks.memory import peaks

        for fn in fns.values():
            fn()  # warm-up (lazy initialisation is not the sampler's memory)
        print("PEER_BENCH_MEMORY " + json.dumps(peaks(fns, remote=remote_peaks)), flush=True)
        sys.exit(0)
    from alignlab.benchmarks.speed import interleaved

    times = interleaved(fns, repeats)
    env = dict(os.environ, PEER_BENCH_MEMORY="1", MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, *sys.argv], env=env, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("PEER_BENCH_MEMORY ")]
    if not lines:
        raise RuntimeError(f"memory child failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return times, json.loads(lines[-1].split(" ", 1)[1])


def report(title: str, t: dict[str, float], mem: dict[str, float], ours: str = "ours", theirs: str = "theirs"):
    print(f"{title}: time ours {t[ours]:.3f}s / theirs {t[theirs]:.3f}s = {t[ours] / t[theirs]:.3f}; "
          f"peak memory ours {mem[ours]:.1f} / theirs {mem[theirs]:.1f} MiB = {mem[ours] / max(mem[theirs], 1e-9):.3f}")
