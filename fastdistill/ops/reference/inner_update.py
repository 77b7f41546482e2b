"""Reference of ``fastdistill::inner_update``."""

from __future__ import annotations

from torch import Tensor

from fastdistill.ops.reference._checks import check_inner_update
from fastdistill.ops.reference._math import softplus


def inner_update(w: Tensor, g: Tensor, raw_lr: Tensor) -> Tensor:
    """``w - softplus(raw_lr) * g``: one inner gradient-descent step of B nets ([B, P])."""
    check_inner_update(w, g, raw_lr)
    return w - softplus(raw_lr) * g
