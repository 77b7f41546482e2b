"""Peak tensor memory of a call, on CUDA (allocator statistics) or the CPU (profiler events)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

R = TypeVar("R")


def peak_memory(fn: Callable[[], R], device: torch.device | str = "cpu") -> tuple[R, int]:
    """Run ``fn()`` and return its result and the peak bytes of tensors it allocated.

    On CUDA this is ``max_memory_allocated`` above the level before the call. The CPU allocator
    keeps no statistics, so there the profiler's individual allocation and free records are
    replayed in time order; this counts every tensor the call allocates (not the C++ kernels'
    non-tensor scratch), which is what grows with the unroll length when graphs are kept alive.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_native_stderr():
        prof.start()
    try:
        out = fn()
    finally:
        with _quiet_native_stderr():
            prof.stop()
    # The raw allocation and free records, in time order: per-op totals would net an op's
    # allocations against its frees and miss peaks inside one call (e.g. a fused C++ step).
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    records.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in records:
        current += e.nbytes()
        peak = max(peak, current)
    return out, peak


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null: the profiler's native library logs its start and stop
    (and a failed GPU query on CPU-only machines) there, which is noise in a CLI's output. Only
    around the profiler's own start/stop, never around the measured call."""
    fd = 2  # the native library's stderr, whatever Python's sys.stderr is
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stderr.flush()
    try:
        saved = os.dup(fd)
    except OSError:  # no file descriptor 2
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
