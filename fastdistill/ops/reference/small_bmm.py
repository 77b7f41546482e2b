"""Reference of ``fastdistill::small_bmm``."""

from __future__ import annotations

import torch
from torch import Tensor

from fastdistill.ops.reference._checks import check_small_bmm


def small_bmm(
    a: Tensor, m: Tensor, bias: Tensor | None = None, acc: Tensor | None = None
) -> Tensor:
    """``acc + a @ m``, else ``bias[:, None, :] + a @ m``, else ``a @ m`` (batched, [B, M, N])."""
    check_small_bmm(a, m, bias, acc)
    if acc is not None:
        return torch.baddbmm(acc, a, m)
    if bias is not None:
        return torch.baddbmm(bias.unsqueeze(1), a, m)
    return torch.bmm(a, m)
