"""Reference of ``fastdistill::max_pool2d``: ATen's own max pooling with indices."""

from __future__ import annotations

import torch
from torch import Tensor

from fastdistill.ops.reference._checks import _tensor

_OP = "fastdistill::max_pool2d"


def check_max_pool2d(
    input: Tensor, kernel_size: list[int], stride: list[int], padding: list[int]
) -> None:
    """Same rules and wording as csrc/include/fastdistill/max_pool_checks.h."""
    _tensor(_OP, "input", input)
    if input.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{_OP}: `input` must have dtype float32 or float64, got {input.dtype}")
    if input.dim() not in (3, 4):
        raise ValueError(
            f"{_OP}: `input` must be [C, H, W] or [N, C, H, W], got shape {list(input.shape)}"
        )
    if not (len(kernel_size) == len(stride) == len(padding) == 2):
        raise ValueError(f"{_OP}: `kernel_size`, `stride` and `padding` must have two entries each")
    if min(kernel_size) < 1 or min(stride) < 1:
        raise ValueError(
            f"{_OP}: `kernel_size` and `stride` must be >= 1, got {list(kernel_size)} and "
            f"{list(stride)}"
        )
    if min(padding) < 0 or any(2 * p > k for p, k in zip(padding, kernel_size, strict=True)):
        raise ValueError(
            f"{_OP}: `padding` must be between 0 and half the kernel size, got {list(padding)} "
            f"for kernel {list(kernel_size)}"
        )
    if any(s + 2 * p < k for s, p, k in zip(input.shape[-2:], padding, kernel_size, strict=True)):
        raise ValueError(
            f"{_OP}: the padded input {list(input.shape)} is smaller than the kernel "
            f"{list(kernel_size)}"
        )


def max_pool2d(
    input: Tensor, kernel_size: list[int], stride: list[int], padding: list[int]
) -> tuple[Tensor, Tensor]:
    """(output, indices) of 2-D max pooling without dilation or ceil mode, as ATen computes."""
    check_max_pool2d(input, kernel_size, stride, padding)
    return torch.ops.aten.max_pool2d_with_indices(input, kernel_size, stride, padding)
