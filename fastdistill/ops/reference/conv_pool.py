"""Pure-PyTorch reference of ``fastdistill::conv_pool_{forward,gather,backward}``.

A 2-d convolution (stride 1, dilation 1, zero padding) of B nets followed by 2x2/2 max pooling
and optionally a ReLU (csrc/include/fastdistill/conv_pool.h has the layouts). Built from ATen's
grouped convolution, ``max_pool2d`` and ``convolution_backward``, so it is differentiable by
autograd and picks the same maxima (first in scan order) as the kernels.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "INACTIVE",
    "ConvPoolDims",
    "conv_pool_backward",
    "conv_pool_backward_tangent",
    "conv_pool_dims",
    "conv_pool_forward",
    "conv_pool_gather",
]

INACTIVE = 255  # code of a position the ReLU zeroed (no gradient flows through it)
_DTYPES = (torch.float32, torch.float64)


class ConvPoolDims(NamedTuple):
    N: int
    G: int
    B: int
    Cin: int
    H: int
    W: int
    Cout: int
    KH: int
    KW: int
    ph: int
    pw: int
    HP: int
    WP: int


def conv_pool_dims(
    op: str, x: Tensor, w: Tensor, b: Tensor | None, padding: list[int] | tuple[int, ...]
) -> ConvPoolDims:
    """Validate the arguments (same rules as the C++ checks) and return the dimensions."""
    if not isinstance(x, Tensor) or not isinstance(w, Tensor):
        raise TypeError(f"{op}: `x` and `w` must be tensors")
    if x.dtype not in _DTYPES:
        raise TypeError(f"{op}: `x` must have dtype float32 or float64")
    if w.dtype != x.dtype or w.device != x.device:
        raise TypeError(f"{op}: `w` must have the dtype and device of `x`")
    if x.dim() != 4:
        raise ValueError(f"{op}: `x` must be 4-D [N, G*Cin, H, W]")
    if w.dim() != 5:
        raise ValueError(f"{op}: `w` must be 5-D [B, Cout, Cin, KH, KW]")
    if len(padding) != 2 or min(padding) < 0:
        raise ValueError(f"{op}: `padding` must be two non-negative ints")
    B, Cout, Cin, KH, KW = w.shape
    if min(B, Cout, Cin, KH, KW) < 1:
        raise ValueError(f"{op}: `w` has an empty dimension")
    N, XC, H, W = x.shape
    if Cin == XC:
        G = 1
    elif Cin * B == XC:
        G = B
    else:
        raise ValueError(
            f"{op}: `x` must have Cin (shared input) or B*Cin (one input per net) channels"
        )
    ph, pw = int(padding[0]), int(padding[1])
    HO, WO = H + 2 * ph - KH + 1, W + 2 * pw - KW + 1
    if HO < 2 or WO < 2:
        raise ValueError(f"{op}: the convolution output must be at least 2x2 for the 2x2 pooling")
    if b is not None and (b.dim() != 2 or tuple(b.shape) != (B, Cout)):
        raise ValueError(f"{op}: `b` must be [B, Cout]")
    return ConvPoolDims(N, G, B, Cin, H, W, Cout, KH, KW, ph, pw, HO // 2, WO // 2)


def _conv(x: Tensor, w: Tensor, b: Tensor | None, d: ConvPoolDims) -> Tensor:
    """Grouped convolution of all nets, cropped to the rows/columns the pooling reads."""
    wf = w.reshape(d.B * d.Cout, d.Cin, d.KH, d.KW)
    bf = None if b is None else b.reshape(-1)
    z = F.conv2d(x, wf, bf, padding=(d.ph, d.pw), groups=d.G)
    return z[..., : 2 * d.HP, : 2 * d.WP]


def _windows(z: Tensor, d: ConvPoolDims) -> Tensor:
    """``[N, C, 2HP, 2WP]`` -> ``[N, C, HP, WP, 4]``: each pooling window's four values."""
    N, C = z.shape[:2]
    z = z.reshape(N, C, d.HP, 2, d.WP, 2).permute(0, 1, 2, 4, 3, 5)
    return z.reshape(N, C, d.HP, d.WP, 4)


def conv_pool_forward(
    x: Tensor, w: Tensor, b: Tensor | None, padding: list[int], relu: bool
) -> tuple[Tensor, Tensor]:
    """``(relu?(maxpool2x2(conv(x, w) + b)), code)``; code = argmax in the window (dy*2+dx)."""
    d = conv_pool_dims("fastdistill::conv_pool_forward", x, w, b, padding)
    z = _conv(x, w, b, d)
    pooled, idx = F.max_pool2d(z, 2, return_indices=True)
    width = 2 * d.WP
    r = torch.arange(d.HP, device=x.device).view(-1, 1)
    q = torch.arange(d.WP, device=x.device).view(1, -1)
    code = (idx // width - 2 * r) * 2 + (idx % width - 2 * q)
    if relu:
        active = pooled > 0
        pooled = torch.where(active, pooled, torch.zeros_like(pooled))
        code = torch.where(active, code, torch.full_like(code, INACTIVE))
    return pooled, code.to(torch.uint8)


def _active(code: Tensor) -> Tensor:
    return code != INACTIVE


def check_codes(op: str, code: Tensor) -> None:
    """Codes are 0-3 (argmax in the 2x2 window) or 255 (inactive), as the kernels require."""
    bad = (code > 3) & (code != INACTIVE)
    if bool(bad.any()):
        index = int(bad.flatten().nonzero()[0, 0])
        value = int(code.flatten()[index])
        raise ValueError(
            f"{op}: `code` holds the invalid value {value} at flat index {index}; valid codes "
            "are 0-3 (argmax in the 2x2 window) and 255 (inactive), as conv_pool_forward "
            "returns them"
        )


def conv_pool_gather(
    x: Tensor, w: Tensor, b: Tensor | None, code: Tensor, padding: list[int]
) -> Tensor:
    """``conv(x, w) + b`` at each window's coded position, 0 where the code is inactive."""
    d = conv_pool_dims("fastdistill::conv_pool_gather", x, w, b, padding)
    check_codes("fastdistill::conv_pool_gather", code)
    z = _windows(_conv(x, w, b, d), d)
    active = _active(code)
    pick = torch.where(active, code, torch.zeros_like(code)).long().unsqueeze(-1)
    out = z.gather(-1, pick).squeeze(-1)
    return torch.where(active, out, torch.zeros_like(out))


def conv_pool_backward(
    grad: Tensor,
    x: Tensor,
    w: Tensor,
    code: Tensor,
    padding: list[int],
    output_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dw, db)`` of the forward pass given ``grad`` at the pooled positions (ignored where
    inactive); outputs not in ``output_mask`` come back as empty tensors."""
    d = conv_pool_dims("fastdistill::conv_pool_backward", x, w, None, padding)
    check_codes("fastdistill::conv_pool_backward", code)
    N, C = grad.shape[:2]
    active = _active(code)
    g = torch.where(active, grad, torch.zeros_like(grad))
    pick = torch.where(active, code, torch.zeros_like(code)).long().unsqueeze(-1)
    win = torch.zeros(N, C, d.HP, d.WP, 4, dtype=grad.dtype, device=grad.device)
    win = win.scatter(-1, pick, g.unsqueeze(-1))
    dense = win.reshape(N, C, d.HP, d.WP, 2, 2).permute(0, 1, 2, 4, 3, 5)
    dense = dense.reshape(N, C, 2 * d.HP, 2 * d.WP)
    HO, WO = d.H + 2 * d.ph - d.KH + 1, d.W + 2 * d.pw - d.KW + 1
    dense = F.pad(dense, (0, WO - 2 * d.WP, 0, HO - 2 * d.HP))
    wf = w.reshape(d.B * d.Cout, d.Cin, d.KH, d.KW)
    mask = [bool(m) for m in output_mask]
    dx, dw, db = torch.ops.aten.convolution_backward(
        dense, x, wf, [d.B * d.Cout], [1, 1], [d.ph, d.pw], [1, 1], False, [0, 0], d.G, mask
    )
    empty = grad.new_empty((0,))
    return (
        dx if mask[0] else empty,
        dw.reshape(w.shape) if mask[1] else empty,
        db.reshape(d.B, d.Cout) if mask[2] else empty,
    )


def conv_pool_backward_tangent(
    grad: Tensor,
    grad_t: Tensor,
    x: Tensor,
    x_t: Tensor | None,
    w: Tensor,
    w_t: Tensor,
    code: Tensor,
    padding: list[int],
    output_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``conv_pool_backward`` and its tangent along ``(grad_t, x_t, w_t)`` (the codes are
    piecewise constant): ``(dx, dw, db, dx_t, dw_t, db_t)``. The backward is bilinear in
    ``(grad, x)`` and ``(grad, w)``, so the tangent is a sum of backward passes. ``output_mask``
    is ``(dx, dx_t, db and db_t, dw and db)`` (3 entries: dw and db as well); ``dw_t`` is always
    computed."""
    op = "fastdistill::conv_pool_backward_tangent"
    conv_pool_dims(op, x, w, None, padding)
    if grad_t.shape != grad.shape or w_t.shape != w.shape:
        raise ValueError(f"{op}: `grad_t` must match `grad` and `w_t` must match `w`")
    if x_t is not None and x_t.shape != x.shape:
        raise ValueError(f"{op}: `x_t` must match `x`")
    mask = [bool(m) for m in output_mask] + [True] * (4 - len(output_mask))
    need_dx, need_dxt, need_b, primal = mask
    dx, dw, db = conv_pool_backward(grad, x, w, code, padding, [need_dx, primal, need_b and primal])
    dx_t, dw_t, db_t = conv_pool_backward(grad_t, x, w, code, padding, [need_dxt, True, need_b])
    if need_dxt:
        dx_t = dx_t + conv_pool_backward(grad, x, w_t, code, padding, [True, False, False])[0]
    if x_t is not None:
        dw_t = dw_t + conv_pool_backward(grad, x_t, w, code, padding, [False, True, False])[1]
    return dx, dw, db, dx_t, dw_t, db_t
