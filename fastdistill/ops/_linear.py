"""``fastdistill.ops.linear``: ``torch.nn.functional.linear`` on the small-product kernels.

On the autograd step path (AlexCifarNet) each inner step multiplies 10 rows by fc1's
4096 x 384 weights, forward and in both derivative orders; a library GEMM call at 10 rows runs
at a few percent of the CPU's rate there. ``small_bmm``'s kernels take these products (and
fall back to the library GEMM for large ones). The derivatives are ``small_bmm`` products too,
each written in the layout its tensor has (the weight gradient as ``[N, K]``, not a transposed
view), so every derivative order stays on the kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastdistill.ops import _backend
from fastdistill.ops._small_bmm import small_bmm
from fastdistill.ops._soft_label_loss import _functorch_grad_active

__all__ = ["linear"]


class _Linear(torch.autograd.Function):
    """x [M, K], weight [N, K], bias [N] or None -> [M, N]; backward by small_bmm products,
    itself differentiable (small_bmm has derivatives); under vmap by small_bmm's vmap rule."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        b = bias.unsqueeze(0) if bias is not None else None
        return small_bmm(x.unsqueeze(0), weight.t().unsqueeze(0), b)[0]

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias = inputs
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        g = grad.unsqueeze(0)
        if ctx.needs_input_grad[0]:
            gx = small_bmm(g, weight.unsqueeze(0))[0]  # [M, N] @ [N, K]
        if ctx.needs_input_grad[1]:
            gw = small_bmm(g.transpose(1, 2), x.unsqueeze(0))[0]  # [N, M] @ [M, K]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(0)
        return gx, gw, gb


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``input @ weight.T + bias`` for ``input [..., K]``, ``weight [N, K]``, ``bias [N]``:
    the values and derivatives of ``torch.nn.functional.linear`` (other summation order)."""
    if (
        input.dim() < 2
        or weight.dim() != 2
        or not _backend.runs_kernel("small_bmm", input.device)
        or _functorch_grad_active()
        or input.dtype != weight.dtype
    ):
        return F.linear(input, weight, bias)
    lead = input.shape[:-1]
    out = _Linear.apply(input.reshape(-1, input.shape[-1]), weight, bias)
    return out.reshape(*lead, weight.shape[0])
