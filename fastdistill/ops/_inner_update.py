"""``fastdistill.ops.inner_update``: one fused gradient-descent step of B nets."""

from __future__ import annotations

import torch
from torch import Tensor

from fastdistill.ops import _backend, _library, reference
from fastdistill.ops._common import as_raw_lr, device_of
from fastdistill.ops.reference import softplus

__all__ = ["inner_update"]

_NAME = "fastdistill::inner_update"


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
    raw_lr = as_raw_lr(raw_lr, w)
    if _backend.runs_kernel("inner_update", device_of(w)):
        return torch.ops.fastdistill.inner_update.default(w, g, raw_lr)
    return reference.inner_update(w, g, raw_lr)


def _fake(w: Tensor, g: Tensor, raw_lr: Tensor) -> Tensor:
    torch._check(g.shape == w.shape, lambda: f"{_NAME}: `g` must match `w`")
    torch._check(raw_lr.dim() == 0, lambda: f"{_NAME}: `raw_lr` must be 0-d")
    return torch.empty(w.shape, dtype=w.dtype, device=w.device)


def _setup_context(ctx, inputs, output) -> None:
    _, g, raw_lr = inputs
    ctx.save_for_backward(g if ctx.needs_input_grad[2] else None, raw_lr)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    if a.dtype in (torch.float32, torch.float64):
        return torch.dot(a.reshape(-1), b.reshape(-1))  # no [B, P] temporary
    return (a * b).sum()


def _backward(ctx, grad: Tensor):
    # out = w - softplus(raw) * g:  d/dw = grad,  d/dg = -lr * grad,
    # d/draw = -sigmoid(raw) * <grad, g>. Plain differentiable ops: double backward works
    # (the unroll engine differentiates through the inner step's gradient g).
    g, raw_lr = ctx.saved_tensors
    grad_w = grad if ctx.needs_input_grad[0] else None
    grad_g = -softplus(raw_lr) * grad if ctx.needs_input_grad[1] else None
    grad_raw = -torch.sigmoid(raw_lr) * _dot(grad, g) if ctx.needs_input_grad[2] else None
    return grad_w, grad_g, grad_raw


def _vmap(info, in_dims, w, g, raw_lr):
    # The op is elementwise over any equal shapes: the vmapped dim becomes one more dim.
    w_dim, g_dim, raw_dim = in_dims
    n = info.batch_size
    w = w.movedim(w_dim, 0) if w_dim is not None else w.unsqueeze(0).expand(n, *w.shape)
    g = g.movedim(g_dim, 0) if g_dim is not None else g.unsqueeze(0).expand(n, *g.shape)
    if raw_dim is not None:  # one step size per vmapped slice: broadcasting math
        lr = softplus(raw_lr.movedim(raw_dim, 0)).reshape((n,) + (1,) * (w.dim() - 1))
        return w - lr * g, 0
    return torch.ops.fastdistill.inner_update(w, g, raw_lr), 0


@_library.on_load
def _register() -> None:
    torch.library.register_fake(_NAME)(_fake)
    torch.library.register_autograd(_NAME, _backward, setup_context=_setup_context)
    if hasattr(torch.library, "register_vmap"):  # torch >= 2.5
        torch.library.register_vmap(_NAME)(_vmap)
