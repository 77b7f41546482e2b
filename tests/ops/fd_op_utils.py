"""Constants and helpers of the op tests (imported by the test modules of tests/ops).

Results are checked against a float64 evaluation of the same formula with error bounds derived
from the rounding of each dtype, so one check covers kernels and references in every dtype.
"""

from __future__ import annotations

import pytest
import torch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.float64]
ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def acc_eps(dtype: torch.dtype) -> float:
    """Rounding unit of the accumulator of reductions (float for half types)."""
    return eps(torch.float64 if dtype == torch.float64 else torch.float32)


def make(shape, dtype, device="cpu", seed=0, scale=1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)


def assert_elementwise(actual, expected64, scale64, dtype, k: float = 8.0) -> None:
    """|actual - expected| <= k * eps(dtype) * scale, elementwise (scale: sum of |terms|)."""
    assert actual.dtype == dtype, (actual.dtype, dtype)
    assert actual.shape == expected64.shape, (actual.shape, expected64.shape)
    err = (actual.double().cpu() - expected64.double().cpu()).abs()
    bound = k * eps(dtype) * scale64.double().cpu() + torch.finfo(dtype).tiny
    bad = err > bound
    if bad.any():
        i = int((err - bound).argmax())
        flat_a, flat_e = actual.reshape(-1), expected64.reshape(-1)
        raise AssertionError(
            f"{int(bad.sum())} of {err.numel()} elements off; worst at {i}: "
            f"{float(flat_a[i])} vs {float(flat_e[i])} (bound {float(bound.reshape(-1)[i])})"
        )


def assert_sum(actual, expected64, l1: float, dtype) -> None:
    """A reduction against its float64 value; ``l1`` is the sum of |terms|. Half types: terms
    may be rounded to the dtype before summing (the reference path does)."""
    assert actual.dtype == dtype and actual.dim() == 0, (actual.dtype, actual.shape)
    err = abs(float(actual) - float(expected64))
    term_eps = acc_eps(dtype) if dtype in (torch.float32, torch.float64) else eps(dtype)
    bound = 2 * eps(dtype) * abs(float(expected64)) + 16 * term_eps * l1 + 1e-300
    assert err <= bound, f"|{float(actual)} - {float(expected64)}| = {err} > {bound}"
