"""Hand-derived loss gradients of the fused step: the value, ``dl/dz``, its tangent along the
logits' tangent, and the mixed label product, for the inner (soft-label) and outer losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastdistill.engine.fused.layers import Unsupported

__all__ = ["inner_loss_grads", "outer_loss_grads"]


def inner_loss_grads(
    z: Tensor, y: Tensor, kind: str, z_dot: Tensor | None, need_dy: bool
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Inner loss value per net, dl/dz, its tangent along z_dot, and (d2l/dy dz) z_dot summed
    over nets (y is shared)."""
    N = z.shape[1]
    if kind == "binary":
        if z.shape[-1] != 1:
            raise Unsupported("binary loss needs one logit")
        zz = z.squeeze(-1)
        yy = y.to(zz.dtype).expand_as(zz)
        value = F.binary_cross_entropy_with_logits(zz, yy, reduction="none").mean(-1)
        sig = torch.sigmoid(zz)
        d = ((sig - yy) / N).unsqueeze(-1)
        dd = dy = None
        if z_dot is not None:
            zd = z_dot.squeeze(-1)
            dd = (sig * (1 - sig) * zd / N).unsqueeze(-1)
            if need_dy:
                dy = zd.sum(0).div_(-N)
        return value, d, dd, dy
    logp = torch.log_softmax(z, -1)
    p = logp.exp()
    target = torch.softmax(y, -1) if kind == "softmax" else y
    value = -(target * logp).sum(-1).mean(-1)
    s = target.sum(-1, keepdim=True)
    d = (p * s - target) / N
    dd = dy = None
    if z_dot is not None:
        zc = z_dot - (p * z_dot).sum(-1, keepdim=True)  # tangent of log_softmax
        dd = p * zc * (s / N)
        if need_dy:
            u = zc.sum(0).div_(-N)  # tangent of dl/dtarget = -log_softmax / N
            if kind == "softmax":
                u = target * (u - (target * u).sum(-1, keepdim=True))
            dy = u
    return value, d, dd, dy


def outer_loss_grads(z: Tensor, targets: Tensor, binary: bool):
    """Per-net hard-label loss and d(mean over nets)/dz."""
    B, N = z.shape[:2]
    if binary:
        if z.shape[-1] != 1:
            raise Unsupported("binary loss needs one logit")
        zz = z.squeeze(-1)
        t = targets.to(zz.dtype).expand_as(zz)
        value = F.binary_cross_entropy_with_logits(zz, t, reduction="none").mean(-1)
        d = ((torch.sigmoid(zz) - t) / (N * B)).unsqueeze(-1)
        return value, d, None, None
    logp = torch.log_softmax(z, -1)
    idx = targets.view(1, N, 1).expand(B, N, 1)
    value = -logp.gather(-1, idx).squeeze(-1).mean(-1)
    d = logp.exp_().scatter_add_(-1, idx, torch.full_like(idx, -1, dtype=z.dtype)).div_(N * B)
    return value, d, None, None
