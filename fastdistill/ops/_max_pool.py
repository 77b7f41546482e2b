"""``fastdistill.ops.max_pool2d``: 2-D max pooling of ``[N, C, H, W]`` activations, kernel or
reference (ATen), same values, indices and derivatives on both paths.

ATen's CPU kernel for this (contiguous, channels-first) layout is an order of magnitude slower
than its channels-last one; AlexCifarNet's two 3x3 stride-2 pools cost more than a tenth of its
outer iteration there. The backward scatters in ATen's order (the same sums where windows
overlap), its derivative is a gather, so every derivative order matches ATen's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastdistill.ops import _backend, _library
from fastdistill.ops._common import rows_vmap
from fastdistill.ops._soft_label_loss import _functorch_grad_active
from fastdistill.ops.reference.max_pool import max_pool2d as reference_max_pool2d

__all__ = ["max_pool2d", "max_pool2d_with_indices"]

_OP = "max_pool2d"
_NAME = "fastdistill::max_pool2d"


def _pair(v: int | tuple[int, ...] | list[int]) -> list[int]:
    return [int(x) for x in v] if isinstance(v, (tuple, list)) else [int(v)] * 2


def max_pool2d_with_indices(
    input: Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
) -> tuple[Tensor, Tensor]:
    """``torch.ops.aten.max_pool2d_with_indices`` without dilation or ceil mode: (output,
    int64 indices into each ``H * W`` plane); differentiable in ``input``."""
    k = _pair(kernel_size)
    s = k if stride is None or (isinstance(stride, (tuple, list)) and not stride) else _pair(stride)
    p = _pair(padding)
    if _backend.runs_kernel(_OP, input.device) and not _functorch_grad_active():
        return torch.ops.fastdistill.max_pool2d.default(input, k, s, p)
    return reference_max_pool2d(input, k, s, p)


def max_pool2d(
    input: Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
) -> Tensor:
    """``torch.nn.functional.max_pool2d`` (no dilation, no ceil mode): same values and
    derivatives."""
    return max_pool2d_with_indices(input, kernel_size, stride, padding)[0]


def _out_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _fake(input: Tensor, kernel_size, stride, padding):
    torch._check(input.dim() in (3, 4), lambda: f"{_NAME}: `input` must be 3-D or 4-D")
    shape = list(input.shape)
    shape[-2] = _out_size(shape[-2], kernel_size[0], stride[0], padding[0])
    shape[-1] = _out_size(shape[-1], kernel_size[1], stride[1], padding[1])
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.long)


def _setup(ctx, inputs, output) -> None:
    x, ctx.kernel, ctx.stride, ctx.padding = inputs
    _, idx = output
    ctx.mark_non_differentiable(idx)
    ctx.save_for_backward(x, idx)


def _backward(ctx, grad: Tensor, _grad_idx):
    x, idx = ctx.saved_tensors
    if _backend.runs_kernel(f"{_OP}_backward", x.device) and not _functorch_grad_active():
        gx = torch.ops.fastdistill.max_pool2d_backward.default(grad, idx, x)
    else:
        gx = torch.ops.aten.max_pool2d_with_indices_backward(
            grad, x, ctx.kernel, ctx.stride, ctx.padding, [1, 1], False, idx
        )
    return gx, None, None, None


def _backward_fake(grad: Tensor, indices: Tensor, input: Tensor) -> Tensor:
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _backward_setup(ctx, inputs, output) -> None:
    _, idx, _ = inputs
    ctx.save_for_backward(idx)


def _backward_backward(ctx, gg: Tensor):
    # The scatter's derivative in ``grad``: gather ``gg`` at the indices (differentiable).
    (idx,) = ctx.saved_tensors
    d_grad = gg.flatten(-2).gather(-1, idx.flatten(-2)).view(idx.shape)
    return d_grad, None, None


@_library.on_load
def _register() -> None:
    torch.library.register_fake(_NAME)(_fake)
    torch.library.register_autograd(_NAME, _backward, setup_context=_setup)
    back = f"{_NAME}_backward"
    torch.library.register_fake(back)(_backward_fake)
    torch.library.register_autograd(back, _backward_backward, setup_context=_backward_setup)
    if hasattr(torch.library, "register_vmap"):  # torch >= 2.5: planes are independent
        rule = rows_vmap(torch.ops.fastdistill.max_pool2d.default, 1)
        torch.library.register_vmap(_NAME)(rule)
        back_rule = rows_vmap(torch.ops.fastdistill.max_pool2d_backward.default, 3)
        torch.library.register_vmap(back)(back_rule)
