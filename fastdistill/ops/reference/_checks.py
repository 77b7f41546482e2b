"""Input checks of the reference ops: same rules, exception types and wording as the C++ host
code (csrc/include/fastdistill/checks.h), so both backends fail alike."""

from __future__ import annotations

import torch
from torch import Tensor

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _tensor(op: str, name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: `{name}` must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_reference_arg(op: str, name: str, ref: Tensor) -> None:
    _tensor(op, name, ref)
    if ref.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{op}: `{name}` must have dtype float32, float64, float16 or bfloat16, got {ref.dtype}"
        )


def check_like(op: str, name: str, t: Tensor, ref_name: str, ref: Tensor, same_shape: bool) -> None:
    _tensor(op, name, t)
    if t.dtype != ref.dtype:
        raise TypeError(
            f"{op}: `{name}` must have the same dtype as `{ref_name}` ({ref.dtype}), got {t.dtype}"
        )
    if t.device != ref.device:
        raise ValueError(
            f"{op}: `{name}` must be on the same device as `{ref_name}` ({ref.device}), "
            f"got {t.device}"
        )
    if same_shape and t.shape != ref.shape:
        raise ValueError(
            f"{op}: `{name}` must have the same shape as `{ref_name}` {list(ref.shape)}, "
            f"got {list(t.shape)}"
        )


def check_scalar(op: str, name: str, t: Tensor) -> None:
    if t.dim() != 0:
        raise ValueError(
            f"{op}: `{name}` must be a 0-d tensor (one step size), got shape {list(t.shape)}"
        )


def check_inner_update(w: Tensor, g: Tensor, raw_lr: Tensor) -> None:
    op = "fastdistill::inner_update"
    check_reference_arg(op, "w", w)
    check_like(op, "g", g, "w", w, same_shape=True)
    check_like(op, "raw_lr", raw_lr, "w", w, same_shape=False)
    check_scalar(op, "raw_lr", raw_lr)


def check_adjoint_update(v: Tensor, hv: Tensor, g: Tensor, raw_lr: Tensor) -> None:
    op = "fastdistill::adjoint_update"
    check_reference_arg(op, "v", v)
    check_like(op, "hv", hv, "v", v, same_shape=True)
    check_like(op, "g", g, "v", v, same_shape=True)
    check_like(op, "raw_lr", raw_lr, "v", v, same_shape=False)
    check_scalar(op, "raw_lr", raw_lr)


def check_small_bmm(a: Tensor, m: Tensor, bias: Tensor | None, acc: Tensor | None) -> None:
    op = "fastdistill::small_bmm"
    check_reference_arg(op, "a", a)
    check_like(op, "m", m, "a", a, same_shape=False)
    if a.dim() != 3 or m.dim() != 3:
        raise ValueError(
            f"{op}: `a` [B, M, K] and `m` [B, K, N] must be 3-D, got {list(a.shape)} and "
            f"{list(m.shape)}"
        )
    if m.shape[0] != a.shape[0] or m.shape[1] != a.shape[2]:
        raise ValueError(
            f"{op}: `m` must be [B, K, N] = [{a.shape[0]}, {a.shape[2]}, N] for `a` "
            f"{list(a.shape)}, got {list(m.shape)}"
        )
    b, rows, cols = a.shape[0], a.shape[1], m.shape[2]
    if bias is not None and acc is not None:
        raise ValueError(f"{op}: give `bias` or `acc`, not both")
    if acc is not None:
        check_like(op, "acc", acc, "a", a, same_shape=False)
        if list(acc.shape) != [b, rows, cols]:
            raise ValueError(
                f"{op}: `acc` must be [B, M, N] = [{b}, {rows}, {cols}], got {list(acc.shape)}"
            )
    if bias is not None:
        check_like(op, "bias", bias, "a", a, same_shape=False)
        if list(bias.shape) != [b, cols]:
            raise ValueError(f"{op}: `bias` must be [B, N] = [{b}, {cols}], got {list(bias.shape)}")
