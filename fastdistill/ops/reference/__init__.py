"""Pure-PyTorch reference implementations of the fastdistill ops, one module per op.

Same signatures and results (to rounding) as the compiled kernels ``torch.ops.fastdistill.*``.
They run when the extension is missing or the reference backend is forced, and they are the
ground truth of the kernel tests. Ordinary differentiable PyTorch: autograd comes for free.
"""

from __future__ import annotations

from fastdistill.ops.reference._math import softplus
from fastdistill.ops.reference.adjoint_update import adjoint_update
from fastdistill.ops.reference.inner_update import inner_update
from fastdistill.ops.reference.local_response_norm import (
    local_response_norm,
    local_response_norm_backward,
    local_response_norm_backward_backward,
)
from fastdistill.ops.reference.max_pool import max_pool2d
from fastdistill.ops.reference.nearest_embedding import embedding_table_norms, nearest_embedding
from fastdistill.ops.reference.seq_step import seq_step
from fastdistill.ops.reference.small_bmm import small_bmm
from fastdistill.ops.reference.soft_label_loss import (
    soft_label_loss,
    soft_label_loss_backward,
    soft_label_loss_double_backward,
)

__all__ = [
    "adjoint_update",
    "embedding_table_norms",
    "inner_update",
    "local_response_norm",
    "local_response_norm_backward",
    "local_response_norm_backward_backward",
    "max_pool2d",
    "nearest_embedding",
    "seq_step",
    "small_bmm",
    "soft_label_loss",
    "soft_label_loss_backward",
    "soft_label_loss_double_backward",
    "softplus",
]
