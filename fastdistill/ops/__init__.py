"""fastdistill ops: fused kernels of the distillation hot path, with a pure-PyTorch fallback.

Each op runs the compiled kernel (``torch.ops.fastdistill.<op>``, C++ on CPU, CUDA on GPU) when
the extension is loaded and has a kernel for the inputs' device, and otherwise its reference
implementation in ``fastdistill.ops.reference`` (same signature, same results to rounding).
``FASTDISTILL_BACKEND=reference|kernels`` or ``set_backend(...)`` force the choice;
``last_backend(op)`` tells which one an op's last call used and why; ``backend_info()`` describes
the build. Importing this package loads the extension (``torch.ops.fastdistill.*`` exist from
then on, with their fake kernels and autograd formulas).
"""

from __future__ import annotations

from fastdistill.ops import _library, reference
from fastdistill.ops._adjoint_update import adjoint_update
from fastdistill.ops._backend import (
    BACKENDS,
    BackendChoice,
    backend_info,
    choose,
    get_backend,
    last_backend,
    runs_kernel,
    set_backend,
    use_kernels,
)
from fastdistill.ops._common import below_autograd
from fastdistill.ops._conv_pool import (
    conv_pool_backward,
    conv_pool_backward_tangent,
    conv_pool_forward,
    conv_pool_gather,
)
from fastdistill.ops._inner_update import inner_update
from fastdistill.ops._linear import linear
from fastdistill.ops._local_response_norm import local_response_norm
from fastdistill.ops._malloc import keep_freed_memory, malloc_state
from fastdistill.ops._max_pool import max_pool2d, max_pool2d_with_indices
from fastdistill.ops._nearest_embedding import embedding_table_norms, nearest_embedding
from fastdistill.ops._seq_step import seq_step, seq_step_record, seq_step_replay
from fastdistill.ops._small_bmm import small_bmm
from fastdistill.ops._soft_label_loss import soft_label_loss

__all__ = [
    "BACKENDS",
    "BackendChoice",
    "adjoint_update",
    "backend_info",
    "below_autograd",
    "choose",
    "conv_pool_backward",
    "conv_pool_backward_tangent",
    "conv_pool_forward",
    "conv_pool_gather",
    "embedding_table_norms",
    "extension_loaded",
    "get_backend",
    "inner_update",
    "keep_freed_memory",
    "last_backend",
    "linear",
    "local_response_norm",
    "malloc_state",
    "max_pool2d",
    "max_pool2d_with_indices",
    "nearest_embedding",
    "reference",
    "runs_kernel",
    "seq_step",
    "seq_step_record",
    "seq_step_replay",
    "set_backend",
    "small_bmm",
    "soft_label_loss",
    "use_kernels",
]


def extension_loaded() -> bool:
    """Whether ``fastdistill._C`` is loaded (its kernels registered)."""
    return _library.load()


_library.load()
