"""Pure-PyTorch reference implementations of the fastdistill ops.

Same signatures and results (to rounding) as the compiled kernels ``torch.ops.fastdistill.*``.
They run when the extension is missing or the reference backend is forced, and they are the
ground truth of the kernel tests. Ordinary differentiable PyTorch: autograd comes for free.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastdistill.ops.reference._checks import check_adjoint_update, check_inner_update
from fastdistill.ops.reference.nearest_embedding import embedding_table_norms, nearest_embedding
from fastdistill.ops.reference.soft_label_loss import (
    soft_label_loss,
    soft_label_loss_backward,
    soft_label_loss_double_backward,
)

__all__ = [
    "adjoint_update",
    "embedding_table_norms",
    "inner_update",
    "nearest_embedding",
    "soft_label_loss",
    "soft_label_loss_backward",
    "soft_label_loss_double_backward",
    "softplus",
]


def softplus(x: Tensor) -> Tensor:
    """``log(1 + exp(x))`` exact to rounding for every x (as the kernels compute it).

    ``torch.nn.functional.softplus`` returns ``x`` itself above its threshold (20), off by
    ``exp(-x)``; this one is ``max(x, 0) + log1p(exp(-|x|))``. Its derivative is ``sigmoid(x)``.
    """
    return torch.logaddexp(x, torch.zeros_like(x))


def inner_update(w: Tensor, g: Tensor, raw_lr: Tensor) -> Tensor:
    """``w - softplus(raw_lr) * g``: one inner gradient-descent step of B nets ([B, P])."""
    check_inner_update(w, g, raw_lr)
    return w - softplus(raw_lr) * g


def adjoint_update(v: Tensor, hv: Tensor, g: Tensor, raw_lr: Tensor) -> tuple[Tensor, Tensor]:
    """One reverse-sweep step: ``(v - softplus(raw_lr) * hv, -sum(g * v))``.

    ``dlr`` is the gradient w.r.t. the step size ``lr = softplus(raw_lr)`` itself (the caller
    multiplies by ``sigmoid(raw_lr)`` for the raw parameter). Not meant to be differentiated.
    """
    check_adjoint_update(v, hv, g, raw_lr)
    v_new = v - softplus(raw_lr) * hv
    dlr = -(g * v).sum()
    return v_new, dlr
