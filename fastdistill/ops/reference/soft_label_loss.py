"""Pure-PyTorch reference of ``fastdistill::soft_label_loss`` and its backward ops.

Per-example inner loss (docs/algorithm.md §2) of logits ``z [N, K]``:

* ``soft``: ``-sum_k y_k log_softmax(z)_k`` with the raw label row ``y [N, K]`` as weights;
* ``softmax``: the same with the target ``t = softmax(y)``;
* ``binary``: BCE-with-logits, ``z [N, 1]``, one real label per example ``y [N]``.

``soft_label_loss`` is ordinary differentiable PyTorch (autograd to any order). The backward and
double-backward references are the same closed forms as the kernels
(csrc/include/fastdistill/soft_label_loss_rows.h), written with differentiable ops so that the
kernels' third derivative can be taken through them; the tests check them against autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastdistill.ops.reference._checks import check_like

__all__ = [
    "LABEL_KINDS",
    "check_soft_label_loss",
    "soft_label_loss",
    "soft_label_loss_backward",
    "soft_label_loss_double_backward",
]

LABEL_KINDS = ("soft", "softmax", "binary")
_OP = "fastdistill::soft_label_loss"
_DTYPES = (torch.float32, torch.float64)


def check_soft_label_loss(logits: Tensor, labels: Tensor, kind: str, op: str = _OP) -> None:
    """Same checks, exception types and messages as the C++ host code
    (csrc/include/fastdistill/soft_label_loss_checks.h)."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"{op}: `logits` must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in _DTYPES:
        raise TypeError(
            f"{op}: `logits` must have dtype float32 or float64, got {logits.dtype} "
            "(fastdistill.ops.soft_label_loss computes float16/bfloat16 in float32)"
        )
    if logits.dim() != 2:
        raise ValueError(
            f"{op}: `logits` must be a 2-D tensor [N, K], got shape {list(logits.shape)}"
        )
    if logits.shape[1] < 1:
        raise ValueError(
            f"{op}: `logits` must have at least one column (K >= 1), got shape {list(logits.shape)}"
        )
    if kind not in LABEL_KINDS:
        raise ValueError(f"{op}: `kind` must be 'soft', 'softmax' or 'binary', got {kind!r}")
    check_like(op, "labels", labels, "logits", logits, same_shape=False)
    n = logits.shape[0]
    if kind == "binary":
        if logits.shape[1] != 1:
            raise ValueError(
                f"{op}: kind 'binary' takes one logit per example: `logits` must have shape "
                f"[N, 1], got {list(logits.shape)}"
            )
        if labels.dim() != 1 or labels.shape[0] != n:
            raise ValueError(
                f"{op}: kind 'binary' takes one label per example: `labels` must have shape "
                f"[N] = [{n}], got {list(labels.shape)}"
            )
    elif labels.shape != logits.shape:
        raise ValueError(
            f"{op}: `labels` must have the same shape as `logits` {list(logits.shape)}, "
            f"got {list(labels.shape)}"
        )


def _check_grad(op: str, grad: Tensor, logits: Tensor) -> None:
    check_like(op, "grad", grad, "logits", logits, same_shape=False)
    n = logits.shape[0]
    if grad.dim() != 1 or grad.shape[0] != n:
        raise ValueError(f"{op}: `grad` must have shape [N] = [{n}], got {list(grad.shape)}")


def soft_label_loss(logits: Tensor, labels: Tensor, kind: str = "soft") -> Tensor:
    """Per-example losses ``[N]`` (see the module docstring)."""
    check_soft_label_loss(logits, labels, kind)
    if kind == "binary":
        return F.binary_cross_entropy_with_logits(logits[:, 0], labels, reduction="none")
    target = torch.softmax(labels, dim=-1) if kind == "softmax" else labels
    return -(target * torch.log_softmax(logits, dim=-1)).sum(-1)


def soft_label_loss_backward(
    grad: Tensor, logits: Tensor, labels: Tensor, kind: str
) -> tuple[Tensor, Tensor]:
    """``(grad * dl/dlogits, grad * dl/dlabels)`` in closed form."""
    op = "fastdistill::soft_label_loss_backward"
    check_soft_label_loss(logits, labels, kind, op)
    _check_grad(op, grad, logits)
    if kind == "binary":
        z = logits[:, 0]
        return (grad * (torch.sigmoid(z) - labels)).unsqueeze(1), -grad * z
    g = grad.unsqueeze(1)
    a = -torch.log_softmax(logits, dim=-1)
    p = torch.softmax(logits, dim=-1)
    if kind == "soft":
        s = labels.sum(-1, keepdim=True)
        return g * (s * p - labels), g * a
    t = torch.softmax(labels, dim=-1)
    ta = (t * a).sum(-1, keepdim=True)
    return g * (p - t), g * (t * (a - ta))


def soft_label_loss_double_backward(
    grad: Tensor,
    logits: Tensor,
    labels: Tensor,
    gg_logits: Tensor,
    gg_labels: Tensor,
    kind: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Vector-Jacobian product of ``soft_label_loss_backward`` for the tangents ``gg_logits``
    (``u``) and ``gg_labels`` (``w``): ``(d/dgrad, d/dlogits, d/dlabels)``. The logits part
    holds the Hessian-vector product ``H_zz u``, the labels part ``d/dy <dl/dz, u>``."""
    op = "fastdistill::soft_label_loss_double_backward"
    check_soft_label_loss(logits, labels, kind, op)
    _check_grad(op, grad, logits)
    check_like(op, "gg_logits", gg_logits, "logits", logits, same_shape=True)
    check_like(op, "gg_labels", gg_labels, "labels", labels, same_shape=True)
    u, w = gg_logits, gg_labels
    if kind == "binary":
        z, u0 = logits[:, 0], u[:, 0]
        sp = torch.sigmoid(z)
        d_grad = (sp - labels) * u0 - z * w
        d_logits = grad * (sp * torch.sigmoid(-z) * u0 - w)
        return d_grad, d_logits.unsqueeze(1), -grad * u0
    g = grad.unsqueeze(1)
    a = -torch.log_softmax(logits, dim=-1)
    p = torch.softmax(logits, dim=-1)
    pu = (p * u).sum(-1, keepdim=True)
    if kind == "soft":
        s = labels.sum(-1, keepdim=True)
        d_grad = s * pu - (labels * u).sum(-1, keepdim=True) + (a * w).sum(-1, keepdim=True)
        d_logits = g * (s * p * (u - pu) + p * w.sum(-1, keepdim=True) - w)
        return d_grad.squeeze(1), d_logits, g * (pu - u)
    t = torch.softmax(labels, dim=-1)
    tu = (t * u).sum(-1, keepdim=True)
    tw = (t * w).sum(-1, keepdim=True)
    b = a - (t * a).sum(-1, keepdim=True)
    c = w - tw
    tcb = (t * c * b).sum(-1, keepdim=True)
    d_grad = pu - tu + (t * b * w).sum(-1, keepdim=True)
    d_logits = g * (p * (u - pu) - t * c)
    d_labels = g * (t * (c * b - tcb) - t * (u - tu))
    return d_grad.squeeze(1), d_logits, d_labels
