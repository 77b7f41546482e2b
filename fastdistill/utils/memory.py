"""Peak tensor memory of a call, on CUDA (allocator statistics) or the CPU (profiler events)."""

from __future__ import annotations

from collections.abc import Callable
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

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    # The raw allocation and free records, in time order: per-op totals would net an op's
    # allocations against its frees and miss peaks inside one call (e.g. a fused C++ step).
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    records.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in records:
        current += e.nbytes()
        peak = max(peak, current)
    return out, peak
