"""``fastdistill.ops.small_bmm``: the batched small matrix products of the fused step's linear
layers (register-blocked CPU kernels; a library GEMM call costs several times their arithmetic
at 10 rows x a few hundred features)."""

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
        the thread count. Not differentiable (the fused step calls it on detached tensors).
    """
    if _backend.runs_kernel("small_bmm", a.device):
        return torch.ops.fastdistill.small_bmm.default(a, m, bias, acc)
    return reference_small_bmm(a, m, bias, acc)


def _fake(a: Tensor, m: Tensor, bias: Tensor | None, acc: Tensor | None) -> Tensor:
    torch._check(a.dim() == 3 and m.dim() == 3, lambda: f"{_NAME}: `a` and `m` must be 3-D")
    return a.new_empty((a.shape[0], a.shape[1], m.shape[2]))


@_library.on_load
def _register() -> None:
    torch.library.register_fake(_NAME)(_fake)
