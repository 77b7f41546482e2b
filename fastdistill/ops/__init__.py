"""fastdistill ops: fused kernels of the distillation hot path, with a pure-PyTorch fallback.

Each op runs the compiled kernel (``torch.ops.fastdistill.<op>``, C++ on CPU, CUDA on GPU) when
the extension is loaded and has a kernel for the inputs' device, and otherwise its reference
implementation in ``fastdistill.ops.reference`` (same signature, same results to rounding).
``FASTDISTILL_BACKEND=reference|kernels`` or ``set_backend(...)`` force the choice;
``last_backend(op)`` tells which one an op's last call used and why; ``backend_info()`` describes
the build.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastdistill import _extension
from fastdistill._extension import (
    BackendChoice,
    backend_info,
    get_backend,
    last_backend,
    set_backend,
    use_kernels,
)
from fastdistill.ops import reference
from fastdistill.ops._conv_pool import conv_pool_backward, conv_pool_forward, conv_pool_gather
from fastdistill.ops._nearest_embedding import embedding_table_norms, nearest_embedding
from fastdistill.ops._soft_label_loss import soft_label_loss

__all__ = [
    "BackendChoice",
    "adjoint_update",
    "backend_info",
    "conv_pool_backward",
    "conv_pool_forward",
    "conv_pool_gather",
    "embedding_table_norms",
    "get_backend",
    "inner_update",
    "last_backend",
    "nearest_embedding",
    "reference",
    "set_backend",
    "soft_label_loss",
    "use_kernels",
]


def _as_raw_lr(raw_lr: Tensor | float, like: object) -> Tensor | object:
    """Step-size argument as a tensor with ``like``'s dtype and device (differentiably).
    Anything else is passed through for the op's input checks to report."""
    if not isinstance(like, Tensor):
        return raw_lr
    dtype = like.dtype if like.is_floating_point() else None
    if isinstance(raw_lr, Tensor):
        if (
            dtype is not None
            and raw_lr.is_floating_point()
            and (raw_lr.dtype != dtype or raw_lr.device != like.device)
        ):
            return raw_lr.to(device=like.device, dtype=dtype)
        return raw_lr
    if isinstance(raw_lr, (int, float)) and not isinstance(raw_lr, bool):
        return torch.tensor(float(raw_lr), dtype=dtype, device=like.device)
    return raw_lr


def _device(t: object) -> torch.device:
    return t.device if isinstance(t, Tensor) else torch.device("cpu")


def inner_update(w: Tensor, g: Tensor, raw_lr: Tensor | float) -> Tensor:
    """One inner gradient-descent step of B nets over flat parameters, fused in one pass.

    Args:
        w: ``[B, P]`` parameters (any shape is accepted: the op is elementwise).
        g: gradient, same shape, dtype and device as ``w``.
        raw_lr: 0-d raw step size (or a Python float); the step is ``lr = softplus(raw_lr)``.
            Cast to ``w``'s dtype and device if needed.

    Returns:
        ``w - softplus(raw_lr) * g`` (contiguous on the kernel path). Differentiable w.r.t. all
        three inputs, to any order (d/dw = grad, d/dg = -lr grad, d/draw = -sigmoid(raw) <grad, g>).
    """
    raw_lr = _as_raw_lr(raw_lr, w)
    if _extension.choose("inner_update", _device(w)).backend == "kernel":
        return torch.ops.fastdistill.inner_update.default(w, g, raw_lr)
    return reference.inner_update(w, g, raw_lr)


class _AdjointUpdateReference(torch.autograd.Function):
    """Reference path with the kernel path's autograd behaviour: backward raises."""

    @staticmethod
    def forward(ctx, v, hv, g, raw_lr):
        return reference.adjoint_update(v, hv, g, raw_lr)

    @staticmethod
    def backward(ctx, grad_v_new, grad_dlr):
        from fastdistill.ops._registrations import _adjoint_update_backward

        return _adjoint_update_backward(ctx, grad_v_new, grad_dlr)


def adjoint_update(
    v: Tensor, hv: Tensor, g: Tensor, raw_lr: Tensor | float
) -> tuple[Tensor, Tensor]:
    """One step of the reverse (adjoint) sweep, fused in one pass over the buffers.

    Args:
        v: ``[B, P]`` adjoint ``dL/dw_{t+1}``.
        hv: ``H_ww v`` of step t, same shape/dtype/device.
        g: the inner gradient of step t, same shape/dtype/device.
        raw_lr: 0-d raw step size of step t (or a float); ``lr = softplus(raw_lr)``.

    Returns:
        ``(v_new, dlr)``: ``v_new = v - lr * hv`` (``dL/dw_t``) and the 0-d
        ``dlr = -sum(g * v)`` (``dL/dlr_t`` w.r.t. the step size itself; multiply by
        ``sigmoid(raw_lr)`` for the raw parameter). The sum is deterministic. Not
        differentiable: backpropagating through the outputs raises.
    """
    raw_lr = _as_raw_lr(raw_lr, v)
    if _extension.choose("adjoint_update", _device(v)).backend == "kernel":
        return torch.ops.fastdistill.adjoint_update.default(v, hv, g, raw_lr)
    if torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in (v, hv, g, raw_lr)
    ):
        return _AdjointUpdateReference.apply(v, hv, g, raw_lr)
    return reference.adjoint_update(v, hv, g, raw_lr)
