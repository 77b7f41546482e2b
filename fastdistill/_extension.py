"""Loading of the compiled extension ``fastdistill._C`` and the choice of backend per op call.

The extension is imported lazily (first op call or first query), and any failure to import it
is recorded, never raised: the ops then run their pure-PyTorch reference implementations.

Environment (read when first needed; ``set_backend`` overrides it at run time):

* ``FASTDISTILL_BACKEND=auto`` (default): kernels where available, reference elsewhere.
* ``FASTDISTILL_BACKEND=reference``: the pure-PyTorch reference everywhere.
* ``FASTDISTILL_BACKEND=kernels``: kernels only; an op call that cannot use one raises.
* ``FASTDISTILL_DISABLE_EXTENSION=1``: do not even import ``fastdistill._C`` (as if it were
  not built).

Public: ``backend_info()``, ``use_kernels(device)``, ``last_backend(op)``, ``set_backend(mode)``,
``get_backend()``, ``load()``.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
from typing import Any, NamedTuple

import torch

__all__ = [
    "BACKENDS",
    "BackendChoice",
    "backend_info",
    "get_backend",
    "last_backend",
    "load",
    "set_backend",
    "use_kernels",
]

BACKENDS = ("auto", "kernels", "reference")
OPS = (
    "inner_update",
    "adjoint_update",
    "nearest_embedding",
    "soft_label_loss",
    "conv_pool_forward",
    "conv_pool_gather",
    "conv_pool_backward",
    "seq_step",
)
_NAMESPACE = "fastdistill"


class BackendChoice(NamedTuple):
    """Which implementation an op call used: ``backend`` is "kernel" or "reference"."""

    op: str
    backend: str
    device: str
    reason: str


class _State:
    def __init__(self) -> None:
        self.attempted = False
        self.loaded = False
        self.module: Any = None
        self.reason: str | None = "not loaded yet"
        self.build: dict[str, Any] = {}
        self.kernel_keys: dict[str, set[str]] = {}  # op -> dispatch keys with a kernel


_lock = threading.RLock()
_state = _State()
_backend_override: str | None = None
_choice_cache: dict[tuple[str, str], BackendChoice] = {}
_last: dict[str, BackendChoice] = {}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def get_backend() -> str:
    """The backend mode in force: ``set_backend``'s, else ``$FASTDISTILL_BACKEND``, else auto."""
    if _backend_override is not None:
        return _backend_override
    mode = os.environ.get("FASTDISTILL_BACKEND", "").strip().lower() or "auto"
    if mode not in BACKENDS:
        raise ValueError(f"FASTDISTILL_BACKEND must be one of {BACKENDS}, got {mode!r}")
    return mode


def set_backend(mode: str | None) -> None:
    """Force the backend for all ops: "auto", "kernels", "reference", or None for the env var."""
    global _backend_override
    if mode is not None and mode not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {mode!r}")
    with _lock:
        _backend_override = mode
        _choice_cache.clear()


def load() -> bool:
    """Import ``fastdistill._C`` once (thread-safe); True if its kernels are registered."""
    if _state.attempted:
        return _state.loaded
    with _lock:
        if _state.attempted:
            return _state.loaded
        try:
            _load_locked()
        finally:
            _state.attempted = True
    return _state.loaded


def _load_locked() -> None:
    if _env_flag("FASTDISTILL_DISABLE_EXTENSION"):
        _state.reason = "disabled by FASTDISTILL_DISABLE_EXTENSION=1"
        return
    try:
        module = importlib.import_module("fastdistill._C")
    except ModuleNotFoundError as exc:
        if exc.name not in ("fastdistill._C", None):
            _state.reason = f"importing fastdistill._C failed: {exc}"
            return
        _state.reason = (
            f"fastdistill._C is not built ({exc}); pure-Python install or "
            "FASTDISTILL_NO_EXTENSION=1 at build time. Build it with `make build` or "
            "`pip install --no-build-isolation -e .`"
        )
        return
    except Exception as exc:  # noqa: BLE001  (undefined symbol, ABI mismatch, OSError, ...)
        _state.reason = (
            f"importing fastdistill._C failed: {type(exc).__name__}: {exc}. It was probably "
            f"built against another torch than the running {torch.__version__}; rebuild with "
            "`make build`"
        )
        return
    try:
        build = json.loads(torch.ops.fastdistill.build_info())
        keys: dict[str, set[str]] = {}
        for op in OPS:
            name = f"{_NAMESPACE}::{op}"
            keys[op] = {
                k
                for k in ("CPU", "CUDA")
                if torch._C._dispatch_has_kernel_for_dispatch_key(name, k)
            }
        from fastdistill.ops import _registrations

        _registrations.register_all()
    except Exception as exc:  # noqa: BLE001  (a broken build must not break the package)
        _state.reason = f"fastdistill._C loaded but is unusable: {type(exc).__name__}: {exc}"
        return
    _state.module = module
    _state.build = build
    _state.kernel_keys = keys
    _state.loaded = True
    _state.reason = None


def backend_info() -> dict[str, Any]:
    """What the extension provides and why it is or is not used.

    Keys: ``extension_loaded``, ``reason`` (why not loaded, else None), ``extension_path``,
    ``built_with_cuda``, ``cuda_archs`` (list), ``cuda_version_built``, ``torch_version_built``,
    ``torch_version``, ``cpu_parallel``, ``cuda_available``, ``forced_backend`` ("auto",
    "kernels" or "reference"), ``kernel_devices`` (op -> device types with a kernel).
    """
    load()
    build = _state.build
    archs = [a for a in build.get("cuda_archs", "").replace(" ", ";").split(";") if a]
    return {
        "extension_loaded": _state.loaded,
        "reason": _state.reason,
        "extension_path": getattr(_state.module, "__file__", None),
        "built_with_cuda": bool(build.get("with_cuda", False)),
        "cuda_archs": archs,
        "cuda_version_built": build.get("cuda_version") or None,
        "torch_version_built": build.get("torch_version"),
        "torch_version": torch.__version__,
        "cpu_parallel": build.get("cpu_parallel"),
        "cuda_available": torch.cuda.is_available(),
        "forced_backend": get_backend(),
        "kernel_devices": {
            op: sorted(k.lower() for k in keys) for op, keys in _state.kernel_keys.items()
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
    if not load():
        return False, f"extension not loaded: {_state.reason}"
    keys = _state.kernel_keys.get(op)
    if keys is None:
        return False, f"no compiled kernel for op {op!r}"
    if device.type == "meta":
        return True, "meta tensors: registered fake kernel"
    key = device.type.upper()
    if key not in keys:
        if device.type == "cuda" and not _state.build.get("with_cuda"):
            return False, "extension built without CUDA (CPU kernels only)"
        return False, f"no {device.type} kernel for {op}"
    return True, f"compiled {device.type} kernel"


def choose(op: str, device: torch.device) -> BackendChoice:
    """Pick the backend of one op call and record it (used by fastdistill.ops)."""
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


def last_backend(op: str) -> BackendChoice | None:
    """The backend the last call of ``op`` used (and why), or None if it has not run yet."""
    return _last.get(op)
