"""``fastdistill.ops.small_bmm``: the batched small matrix products of the fused step's linear
layers and of ``fastdistill.ops.linear`` (register-blocked CPU kernels; a library GEMM call
costs several times their arithmetic at 10 rows x a few hundred features). Differentiable to
any order: its derivatives are small_bmm products again."""

from __future__ import annotations

import torch
from torch import Tensor

from fastdistill.ops import _backend, _library
from fastdistill.ops.reference.small_bmm import small_bmm as reference_small_bmm

__all__ = ["small_bmm"]

_NAME = "fastdistill::small_bmm"


def small_bmm(
    a: Tensor, m: Tensor, bias: Tensor | None = None, acc: Tensor | None = None
) -> Tensor:
    """``acc + a @ m``, else ``bias[:, None, :] + a @ m``, else ``a @ m``.

    Args:
        a: ``[B, M, K]``, any strides (an expanded batch dimension included).
        m: ``[B, K, N]``; unit stride along N, or along K on both ``a`` and ``m`` (``m = W^T``),
            takes the small kernels, any other layout (and large products) the library GEMM.
        bias: ``[B, N]``, added to every row. acc: ``[B, M, N]``, added instead.

    Returns:
        A new contiguous ``[B, M, N]`` tensor. Products are summed in a fixed order whatever
        the thread count.
    """
    if _backend.runs_kernel("small_bmm", a.device):
        return torch.ops.fastdistill.small_bmm.default(a, m, bias, acc)
    return reference_small_bmm(a, m, bias, acc)


def _fake(a: Tensor, m: Tensor, bias: Tensor | None, acc: Tensor | None) -> Tensor:
    torch._check(a.dim() == 3 and m.dim() == 3, lambda: f"{_NAME}: `a` and `m` must be 3-D")
    return a.new_empty((a.shape[0], a.shape[1], m.shape[2]))


def _setup(ctx, inputs, output) -> None:
    a, m, bias, acc = inputs
    ctx.has_bias = bias is not None
    ctx.has_acc = acc is not None
    ctx.save_for_backward(a, m)


def _backward(ctx, grad: Tensor):
    a, m = ctx.saved_tensors
    ga = small_bmm(grad, m.transpose(1, 2)) if ctx.needs_input_grad[0] else None
    gm = small_bmm(a.transpose(1, 2), grad) if ctx.needs_input_grad[1] else None
    gb = grad.sum(1) if ctx.has_bias and not ctx.has_acc and ctx.needs_input_grad[2] else None
    gacc = grad if ctx.has_acc and ctx.needs_input_grad[3] else None
    return ga, gm, gb, gacc


def _vmap(info, in_dims, a, m, bias, acc):
    # The vmapped dim folded into the batch of matrices (the products are independent).
    n = info.batch_size

    def fold(t, d):
        if t is None:
            return None
        t = t.movedim(d, 0) if d is not None else t.unsqueeze(0).expand(n, *t.shape)
        return t.reshape(n * t.shape[1], *t.shape[2:])

    args = [fold(t, d) for t, d in zip((a, m, bias, acc), in_dims, strict=True)]
    out = torch.ops.fastdistill.small_bmm.default(*args)
    return out.reshape(n, -1, *out.shape[1:]), 0


@_library.on_load
def _register() -> None:
    torch.library.register_fake(_NAME)(_fake)
    torch.library.register_autograd(_NAME, _backward, setup_context=_setup)
    if hasattr(torch.library, "register_vmap"):
        torch.library.register_vmap(_NAME)(_vmap)
