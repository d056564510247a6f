"""Shared benchmark harness: interleaved timing in one process, peak memory per fresh subprocess.

Timing: every round runs each case once, in turn (so drifts in machine load hit all cases
alike); the table reports the median over rounds after a warm-up round.

Peak memory (CPU): each case runs in a fresh subprocess with ``MALLOC_MMAP_THRESHOLD_=65536``
(freed blocks go back to the OS); after one warm-up call the high-water mark is reset by
writing ``5`` to ``/proc/self/clear_refs``; the peak is ``VmHWM`` after the measured call minus
``VmRSS`` before it (from ``/proc/self/status``). On CUDA the peak is
``torch.cuda.max_memory_allocated`` over the call minus the memory allocated before it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_cases(cases: dict[str, Callable[[], object]], rounds: int, device: str = "cpu") -> dict[str, list[float]]:
    """Seconds per call for each case, interleaved; the first (warm-up) round is dropped."""
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(rounds + 1):
        for name, fn in cases.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if r:
                times[name].append(time.perf_counter() - t0)
    return times


def peak_memory_here(fn: Callable[[], object], device: str = "cpu") -> int:
    """Peak extra bytes of one call of ``fn`` (after one warm-up call), measured in this process."""
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status("VmRSS")
    fn()
    return _status("VmHWM") - base


def peak_memory_subprocess(script: str, case: str, extra: list[str]) -> int:
    """Run ``script --memory-case case`` in a fresh interpreter and read the bytes it prints."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(
        [sys.executable, script, "--memory-case", case, *extra], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


def table(rows: list[tuple[str, float, float | None]], baseline: str) -> str:
    """Markdown: case | median ms | x baseline | peak MiB | x baseline."""
    base = dict((r[0], r) for r in rows)[baseline]
    lines = ["| case | median time (ms) | time vs forward | peak memory (MiB) | memory vs forward |", "|---|---:|---:|---:|---:|"]
    for name, t, mem in rows:
        mem_s = f"{mem / 2**20:.1f}" if mem is not None else "n/a"
        mem_r = f"{mem / base[2]:.2f}x" if mem is not None and base[2] else "n/a"
        lines.append(f"| {name} | {t * 1e3:.1f} | {t / base[1]:.2f}x | {mem_s} | {mem_r} |")
    return "\n".join(lines)


def median(xs: list[float]) -> float:
    return statistics.median(xs)
