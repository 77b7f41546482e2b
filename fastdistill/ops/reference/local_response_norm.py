"""Reference of ``fastdistill.ops.local_response_norm``: torch's own formula, and its
vector-Jacobian product written out in differentiable PyTorch (the kernel's second
derivatives go through it)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from fastdistill.ops.reference._checks import _tensor, check_like

_OP = "fastdistill::local_response_norm"


def check_local_response_norm(
    op: str, input: Tensor, size: int, alpha: float, beta: float, k: float
) -> None:
    """Same rules and wording as csrc/include/fastdistill/local_response_norm_checks.h."""
    _tensor(op, "input", input)
    if input.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise TypeError(f"{op}: `input` must have dtype float32 or float64, got {input.dtype}")
    if input.dim() < 3:
        raise ValueError(
            f"{op}: `input` must have 3 or more dimensions [N, C, ...], got shape "
            f"{list(input.shape)}"
        )
    if size < 1:
        raise ValueError(f"{op}: `size` must be >= 1, got {size}")
    if not all(math.isfinite(v) for v in (alpha, beta, k)):
        raise ValueError(f"{op}: `alpha`, `beta` and `k` must be finite, got {alpha}, {beta}, {k}")


def _window_sum(t: Tensor, before: int, after: int) -> Tensor:
    """``out[:, c] = sum of t[:, c - before : c + after + 1]`` (zero outside the channels)."""
    n, c = t.shape[:2]
    flat = t.reshape(n, 1, c, -1, 1)
    padded = F.pad(flat, (0, 0, 0, 0, before, after))
    size = before + after + 1
    return (F.avg_pool3d(padded, (size, 1, 1), stride=1) * size).reshape(t.shape)


def local_response_norm(
    input: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> Tensor:
    """``x / (k + alpha / size * sum of x^2 over channels [c - size//2, c + (size-1)//2])^beta``,
    the formula of ``torch.nn.functional.local_response_norm``."""
    check_local_response_norm(_OP, input, size, alpha, beta, k)
    return F.local_response_norm(input, size, alpha, beta, k)


def local_response_norm_backward(
    grad: Tensor, input: Tensor, size: int, alpha: float, beta: float, k: float
) -> Tensor:
    """``d/dinput <grad, local_response_norm(input)>``, in closed form (differentiable)."""
    op = f"{_OP}_backward"
    check_local_response_norm(op, input, size, alpha, beta, k)
    check_like(op, "grad", grad, "input", input, same_shape=True)
    lo, hi = size // 2, (size - 1) // 2
    base = k + (alpha / size) * _window_sum(input * input, lo, hi)
    q = base.pow(-beta)
    t = grad * input * q / base
    return grad * q - (2.0 * alpha * beta / size) * input * _window_sum(t, hi, lo)


def local_response_norm_backward_backward(
    grad: Tensor, input: Tensor, gg: Tensor, size: int, alpha: float, beta: float, k: float
) -> tuple[Tensor, Tensor]:
    """The derivatives of ``<gg, local_response_norm_backward(grad, input)>`` in ``grad`` and
    ``input``: ``(J gg, H gg)``, J the norm's Jacobian, H the Hessian of ``<grad, norm(input)>``."""
    op = f"{_OP}_backward_backward"
    check_local_response_norm(op, input, size, alpha, beta, k)
    check_like(op, "grad", grad, "input", input, same_shape=True)
    check_like(op, "gg", gg, "input", input, same_shape=True)
    _, vjp = torch.func.vjp(
        lambda g, i: local_response_norm_backward(g, i, size, alpha, beta, k), grad, input
    )
    return vjp(gg)
