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
