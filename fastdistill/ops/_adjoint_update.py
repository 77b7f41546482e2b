"""``fastdistill.ops.adjoint_update``: one fused step of the adjoint engine's reverse sweep."""

from __future__ import annotations

import torch
from torch import Tensor

from fastdistill.ops import _backend, _library, reference
from fastdistill.ops._common import as_raw_lr, device_of, no_setup, not_differentiable

__all__ = ["adjoint_update"]

_NAME = "fastdistill::adjoint_update"
_backward = not_differentiable(
    "fastdistill.ops.adjoint_update is not differentiable: it is one step of a hand-written "
    "reverse sweep (the adjoint engine). Differentiate through inner_update instead (the "
    "unroll engine), or call adjoint_update on detached tensors."
)


class _Reference(torch.autograd.Function):
    """Reference path with the kernel path's autograd behaviour: backward raises."""

    @staticmethod
    def forward(ctx, v, hv, g, raw_lr):
        return reference.adjoint_update(v, hv, g, raw_lr)

    @staticmethod
    def backward(ctx, grad_v_new, grad_dlr):
        return _backward(ctx, grad_v_new, grad_dlr)


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
    raw_lr = as_raw_lr(raw_lr, v)
    if _backend.runs_kernel("adjoint_update", device_of(v)):
        return torch.ops.fastdistill.adjoint_update.default(v, hv, g, raw_lr)
    if torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in (v, hv, g, raw_lr)
    ):
        return _Reference.apply(v, hv, g, raw_lr)
    return reference.adjoint_update(v, hv, g, raw_lr)


def _fake(v: Tensor, hv: Tensor, g: Tensor, raw_lr: Tensor):
    torch._check(hv.shape == v.shape, lambda: f"{_NAME}: `hv` must match `v`")
    torch._check(g.shape == v.shape, lambda: f"{_NAME}: `g` must match `v`")
    torch._check(raw_lr.dim() == 0, lambda: f"{_NAME}: `raw_lr` must be 0-d")
    v_new = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    return v_new, v.new_empty(())


@_library.on_load
def _register() -> None:
    torch.library.register_fake(_NAME)(_fake)
    torch.library.register_autograd(_NAME, _backward, setup_context=no_setup)
