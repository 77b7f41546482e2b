"""The choice of backend per op call: compiled kernel or pure-PyTorch reference, and why.

Environment (read when first needed; :func:`set_backend` overrides it at run time):

* ``FASTDISTILL_BACKEND=auto`` (default): kernels where available, reference elsewhere.
* ``FASTDISTILL_BACKEND=reference``: the pure-PyTorch reference everywhere.
* ``FASTDISTILL_BACKEND=kernels``: kernels only; an op call that cannot use one raises.
"""

from __future__ import annotations

import os
import threading
from typing import Any, NamedTuple

import torch

from fastdistill.ops import _library, _malloc

__all__ = [
    "BACKENDS",
    "BackendChoice",
    "backend_info",
    "choose",
    "get_backend",
    "last_backend",
    "record",
    "runs_kernel",
    "set_backend",
    "use_kernels",
]

BACKENDS = ("auto", "kernels", "reference")


class BackendChoice(NamedTuple):
    """Which implementation an op call used: ``backend`` is "kernel" or "reference"."""

    op: str
    backend: str
    device: str
    reason: str


_lock = threading.RLock()
_override: str | None = None
_choice_cache: dict[tuple[str, str], BackendChoice] = {}
_last: dict[str, BackendChoice] = {}


def get_backend() -> str:
    """The backend mode in force: ``set_backend``'s, else ``$FASTDISTILL_BACKEND``, else auto."""
    if _override is not None:
        return _override
    mode = os.environ.get("FASTDISTILL_BACKEND", "").strip().lower() or "auto"
    if mode not in BACKENDS:
        raise ValueError(f"FASTDISTILL_BACKEND must be one of {BACKENDS}, got {mode!r}")
    return mode


def set_backend(mode: str | None) -> None:
    """Force the backend for all ops: "auto", "kernels", "reference", or None for the env var."""
    global _override
    if mode is not None and mode not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {mode!r}")
    with _lock:
        _override = mode
        _choice_cache.clear()


def backend_info() -> dict[str, Any]:
    """What the extension provides and why it is or is not used.

    Keys: ``extension_loaded``, ``reason`` (why not loaded, else None), ``extension_path``,
    ``built_with_cuda``, ``cuda_archs`` (list), ``cuda_version_built``, ``torch_version_built``,
    ``torch_version``, ``cpu_parallel``, ``cuda_available``, ``forced_backend`` ("auto",
    "kernels" or "reference"), ``kernel_devices`` (op -> device types with a kernel),
    ``malloc`` (what ``keep_freed_memory`` did; None before the first hypergradient).
    """
    st = _library.state()
    build = st.build
    archs = [a for a in build.get("cuda_archs", "").replace(" ", ";").split(";") if a]
    return {
        "extension_loaded": st.loaded,
        "reason": st.reason,
        "extension_path": getattr(st.module, "__file__", None),
        "built_with_cuda": bool(build.get("with_cuda", False)),
        "cuda_archs": archs,
        "cuda_version_built": build.get("cuda_version") or None,
        "torch_version_built": build.get("torch_version"),
        "torch_version": torch.__version__,
        "cpu_parallel": build.get("cpu_parallel"),
        "cuda_available": torch.cuda.is_available(),
        "forced_backend": get_backend(),
        "malloc": _malloc.malloc_state(),
        "kernel_devices": {
            op: sorted(k.lower() for k in keys) for op, keys in st.kernel_keys.items()
        },
    }


def use_kernels(device: torch.device | str, op: str = "inner_update") -> tuple[bool, str]:
    """Can ``op`` run its compiled kernel on ``device``? Returns (ok, reason).

    A query only: it raises nothing (except ValueError for an invalid FASTDISTILL_BACKEND), even
    in "kernels" mode; the op call is what raises there.
    """
    device = torch.device(device)
    mode = get_backend()
    if mode == "reference":
        return False, "reference backend forced (FASTDISTILL_BACKEND=reference or set_backend)"
    st = _library.state()
    if not st.loaded:
        return False, f"extension not loaded: {st.reason}"
    keys = st.kernel_keys.get(op)
    if keys is None:
        return False, f"no compiled kernel for op {op!r}"
    if device.type == "meta":
        return True, "meta tensors: registered fake kernel"
    if device.type.upper() not in keys:
        if device.type == "cuda" and not st.build.get("with_cuda"):
            return False, "extension built without CUDA (CPU kernels only)"
        return False, f"no {device.type} kernel for {op}"
    return True, f"compiled {device.type} kernel"


def choose(op: str, device: torch.device) -> BackendChoice:
    """Pick the backend of one call of ``op`` on ``device`` and record it; raises in "kernels"
    mode when no kernel can run."""
    key = (op, device.type)
    choice = _choice_cache.get(key)
    if choice is None:
        ok, reason = use_kernels(device, op)
        if not ok and get_backend() == "kernels":
            raise RuntimeError(
                f"fastdistill.ops.{op}: FASTDISTILL_BACKEND=kernels but no kernel can run on "
                f"{device.type}: {reason}"
            )
        choice = BackendChoice(op, "kernel" if ok else "reference", device.type, reason)
        _choice_cache[key] = choice
    _last[op] = choice
    return choice


def runs_kernel(op: str, device: torch.device) -> bool:
    """``choose(op, device)`` says kernel."""
    return choose(op, device).backend == "kernel"


def record(op: str, backend: str, device: torch.device, reason: str) -> None:
    """Record a choice an op made itself (e.g. the reference under a torch.func transform)."""
    _last[op] = BackendChoice(op, backend, device.type, reason)


def last_backend(op: str) -> BackendChoice | None:
    """The backend the last call of ``op`` used (and why), or None if it has not run yet."""
    return _last.get(op)
