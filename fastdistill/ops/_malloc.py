"""Keep freed CPU memory in the process between outer iterations (glibc only).

An outer iteration allocates the same tensors every time (trajectory, activations, gradients:
tens of MB for LeNet, GB for AlexCifarNet) and frees them at its end. With glibc's defaults the
large blocks are ``mmap``-ed and unmapped, and the top of the heap is trimmed, so the next
iteration page-faults all of that memory in again: ~3,700 page faults and ~6 ms of kernel time
per LeNet iteration of ~50-100 ms on the development machine. :func:`keep_freed_memory` raises
glibc's mmap and trim thresholds once, so that freed blocks stay in the heap and are reused:
the process keeps its peak footprint (resident memory no longer shrinks after a peak) in
exchange for no repeated page faults. PyTorch's CPU allocator has no cache of its own.

``FASTDISTILL_MALLOC=default`` leaves the allocator alone. Elsewhere than glibc it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading

__all__ = ["keep_freed_memory", "malloc_state"]

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap, and up to 1 GiB stays untrimmed
_TOP_PAD = 64 << 20  # grow the heap 64 MiB at a time

_lock = threading.Lock()
_state: str | None = None


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> str:
    """Apply the setting once per process (later calls return the first outcome): "on",
    "off (FASTDISTILL_MALLOC=default)" or "unavailable (not glibc)"."""
    global _state
    if _state is not None:
        return _state
    with _lock:
        if _state is not None:
            return _state
        if os.environ.get("FASTDISTILL_MALLOC", "").strip().lower() == "default":
            _state = "off (FASTDISTILL_MALLOC=default)"
            return _state
        libc = _glibc()
        if libc is None:
            _state = "unavailable (not glibc)"
            return _state
        ok = all(
            libc.mallopt(param, value) == 1
            for param, value in (
                (_M_MMAP_THRESHOLD, _THRESHOLD),
                (_M_TRIM_THRESHOLD, _THRESHOLD),
                (_M_TOP_PAD, _TOP_PAD),
            )
        )
        _state = "on" if ok else "unavailable (mallopt refused)"
        return _state


def malloc_state() -> str | None:
    """What :func:`keep_freed_memory` did, None if it has not run in this process."""
    return _state
