"""``fastdistill.ops.local_response_norm``: local response normalisation across channels,
kernel or reference (torch's formula), differentiable to any order on both paths.

The kernel path runs the forward, the first derivative and the second derivatives (when no
third is being recorded) in one pass each, where torch's formula costs a padded copy, an
``avg_pool3d`` and several elementwise passes over the activations (AlexCifarNet's real-batch
pass spent about a fifth of its time there, its Hessian-vector products a sixth).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastdistill.ops import _backend, _library, reference
from fastdistill.ops._common import rows_vmap
from fastdistill.ops._soft_label_loss import _functorch_grad_active
from fastdistill.ops.reference.local_response_norm import check_local_response_norm

__all__ = ["local_response_norm"]

_OP = "local_response_norm"
_LRN = "fastdistill::local_response_norm"


def local_response_norm(
    input: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> Tensor:
    """Same values and derivatives as ``torch.nn.functional.local_response_norm`` (to
    rounding). ``input``: ``[N, C, ...]``, float32/float64 (float16/bfloat16 computed in
    float32); the window of channel ``c`` is ``[c - size//2, c + (size-1)//2]``."""
    check_local_response_norm(_LRN, input, size, alpha, beta, k)
    half = input.dtype in (torch.float16, torch.bfloat16)
    x = input.float() if half else input
    size, alpha, beta, k = int(size), float(alpha), float(beta), float(k)
    if _backend.runs_kernel(_OP, x.device) and not _functorch_grad_active():
        y = torch.ops.fastdistill.local_response_norm.default(x, size, alpha, beta, k)
    else:
        if _functorch_grad_active():
            _backend.record(_OP, "reference", x.device, "torch.func autograd transform active")
        y = reference.local_response_norm(x, size, alpha, beta, k)
    return y.to(input.dtype) if half else y


def _fake(input: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    torch._check(input.dim() >= 3, lambda: f"{_LRN}: `input` must have 3 or more dimensions")
    return torch.empty_like(input)


def _backward_fake(grad: Tensor, input: Tensor, size: int, alpha: float, beta: float, k: float):
    torch._check(grad.shape == input.shape, lambda: f"{_LRN}_backward: `grad` must match `input`")
    return torch.empty_like(input)


def _setup(ctx, inputs, output) -> None:
    x, *ctx.params = inputs
    ctx.save_for_backward(x)


def _backward(ctx, grad: Tensor):
    (x,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None
    gx = torch.ops.fastdistill.local_response_norm_backward.default(grad, x, *ctx.params)
    return gx, None, None, None, None


def _backward_setup(ctx, inputs, output) -> None:
    grad, x, *ctx.params = inputs
    ctx.save_for_backward(grad, x)


def _backward_backward(ctx, gg: Tensor):
    # Second derivatives (the Hessian-vector products of the inner steps): one kernel pass
    # where no higher derivative is being recorded, else the reference's differentiable form.
    grad, x = ctx.saved_tensors
    need_grad, need_x = ctx.needs_input_grad[:2]
    if not (need_grad or need_x):
        return (None,) * 6
    recording = torch.is_grad_enabled() and any(t.requires_grad for t in (grad, x, gg))
    if not recording and _backend.runs_kernel(f"{_OP}_backward_backward", x.device):
        d_grad, d_x = torch.ops.fastdistill.local_response_norm_backward_backward.default(
            grad, x, gg.contiguous(), *ctx.params
        )
    else:
        d_grad, d_x = reference.local_response_norm_backward_backward(grad, x, gg, *ctx.params)
    return (d_grad if need_grad else None), (d_x if need_x else None), None, None, None, None


def _backward_backward_fake(grad, input, gg, size, alpha, beta, k):
    torch._check(grad.shape == input.shape, lambda: f"{_LRN}_backward_backward: shape mismatch")
    return torch.empty_like(input), torch.empty_like(input)


@_library.on_load
def _register() -> None:
    lib = torch.library
    lib.register_fake(_LRN)(_fake)
    lib.register_fake(f"{_LRN}_backward")(_backward_fake)
    lib.register_fake(f"{_LRN}_backward_backward")(_backward_backward_fake)
    lib.register_autograd(_LRN, _backward, setup_context=_setup)
    lib.register_autograd(f"{_LRN}_backward", _backward_backward, setup_context=_backward_setup)
    if hasattr(lib, "register_vmap"):  # torch >= 2.5: samples are independent rows
        ops = torch.ops.fastdistill
        lib.register_vmap(_LRN)(rows_vmap(ops.local_response_norm.default, 1))
        lib.register_vmap(f"{_LRN}_backward")(
            rows_vmap(ops.local_response_norm_backward.default, 2)
        )
        lib.register_vmap(f"{_LRN}_backward_backward")(
            rows_vmap(ops.local_response_norm_backward_backward.default, 3)
        )
