"""Reference of ``fastdistill::adjoint_update``."""

from __future__ import annotations

from torch import Tensor

from fastdistill.ops.reference._checks import check_adjoint_update
from fastdistill.ops.reference._math import softplus


def adjoint_update(v: Tensor, hv: Tensor, g: Tensor, raw_lr: Tensor) -> tuple[Tensor, Tensor]:
    """One reverse-sweep step: ``(v - softplus(raw_lr) * hv, -sum(g * v))``.

    ``dlr`` is the gradient w.r.t. the step size ``lr = softplus(raw_lr)`` itself (the caller
    multiplies by ``sigmoid(raw_lr)`` for the raw parameter). Not meant to be differentiated.
    """
    check_adjoint_update(v, hv, g, raw_lr)
    v_new = v - softplus(raw_lr) * hv
    dlr = -(g * v).sum()
    return v_new, dlr
