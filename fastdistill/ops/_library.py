"""Loading of the compiled library ``fastdistill._C`` and the registry of what it provides.

``fastdistill.ops`` loads it on import; a failure to import it is recorded, never raised (the ops
then run their pure-PyTorch references). Op modules register their Python-side pieces (fake
kernels, autograd formulas, vmap rules) with :func:`on_load`; they run once the library is
loaded, since an op must exist before anything can be registered on it.

``FASTDISTILL_DISABLE_EXTENSION=1`` skips the import (as if the library were not built).
"""

from __future__ import annotations

import importlib
import json
import os
import threading
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["OPS", "LibraryState", "load", "on_load", "state"]

NAMESPACE = "fastdistill"
OPS = (
    "inner_update",
    "adjoint_update",
    "nearest_embedding",
    "soft_label_loss",
    "conv_pool_forward",
    "conv_pool_gather",
    "conv_pool_backward",
    "conv_pool_backward_tangent",
    "seq_step",
    "seq_step_record",
    "seq_step_replay",
    "small_bmm",
    "local_response_norm",
    "local_response_norm_backward_backward",
    "max_pool2d",
    "max_pool2d_backward",
)


class LibraryState:
    """What loading found: the module, its build description, the dispatch keys with a
    kernel per op, and why it is not usable (None when it is)."""

    def __init__(self) -> None:
        self.attempted = False
        self.loaded = False
        self.module: Any = None
        self.reason: str | None = "not loaded yet"
        self.build: dict[str, Any] = {}
        self.kernel_keys: dict[str, set[str]] = {}


_lock = threading.RLock()
_state = LibraryState()
_hooks: list[Callable[[], None]] = []


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def state() -> LibraryState:
    """The load state (loads first if that has not been tried yet)."""
    load()
    return _state


def on_load(fn: Callable[[], None]) -> Callable[[], None]:
    """Run ``fn`` once the library is loaded (now, if it already is). A decorator."""
    with _lock:
        _hooks.append(fn)
        if _state.loaded:
            fn()
    return fn


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


def _import_module() -> Any:
    """The imported ``fastdistill._C``, or None with ``_state.reason`` saying why not."""
    if _env_flag("FASTDISTILL_DISABLE_EXTENSION"):
        _state.reason = "disabled by FASTDISTILL_DISABLE_EXTENSION=1"
        return None
    try:
        return importlib.import_module("fastdistill._C")
    except ModuleNotFoundError as exc:
        if exc.name not in ("fastdistill._C", None):
            _state.reason = f"importing fastdistill._C failed: {exc}"
            return None
        _state.reason = (
            f"fastdistill._C is not built ({exc}); pure-Python install or "
            "FASTDISTILL_NO_EXTENSION=1 at build time. Build it with `make build` or "
            "`pip install --no-build-isolation -e .`"
        )
    except Exception as exc:  # noqa: BLE001  (undefined symbol, ABI mismatch, OSError, ...)
        _state.reason = (
            f"importing fastdistill._C failed: {type(exc).__name__}: {exc}. It was probably "
            f"built against another torch than the running {torch.__version__}; rebuild with "
            "`make build`"
        )
    return None


def _load_locked() -> None:
    module = _import_module()
    if module is None:
        return
    try:
        build = json.loads(torch.ops.fastdistill.build_info())
        keys: dict[str, set[str]] = {}
        for op in OPS:
            name = f"{NAMESPACE}::{op}"
            keys[op] = {
                k
                for k in ("CPU", "CUDA")
                if torch._C._dispatch_has_kernel_for_dispatch_key(name, k)
            }
        for hook in _hooks:
            hook()
    except Exception as exc:  # noqa: BLE001  (a broken build must not break the package)
        _state.reason = f"fastdistill._C loaded but is unusable: {type(exc).__name__}: {exc}"
        return
    _state.module = module
    _state.build = build
    _state.kernel_keys = keys
    _state.loaded = True
    _state.reason = None
