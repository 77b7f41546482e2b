"""Elementwise functions the references share, computed as the kernels compute them."""

from __future__ import annotations

import torch
from torch import Tensor


def softplus(x: Tensor) -> Tensor:
    """``log(1 + exp(x))`` exact to rounding for every x (as the kernels compute it).

    ``torch.nn.functional.softplus`` returns ``x`` itself above its threshold (20), off by
    ``exp(-x)``; this one is ``max(x, 0) + log1p(exp(-|x|))``. Its derivative is ``sigmoid(x)``.
    """
    return torch.logaddexp(x, torch.zeros_like(x))


def sqrt_correctly_rounded(x: Tensor) -> Tensor:
    """``sqrt(x)`` correctly rounded in float64, as C++ ``std::sqrt`` (the kernels) computes it.

    Some torch CPU builds return float64 square roots 1 ulp off for about 1% of inputs. One
    Newton step with an exact residual (Dekker's product split of ``y * y``) restores the
    correctly rounded result. Other dtypes go through float64 and are rounded back.
    """
    dtype = x.dtype
    x = x.double()
    y = x.sqrt()
    c = 134217729.0 * y  # 2**27 + 1: splits y into two 26-bit halves
    hi = c - (c - y)
    lo = y - hi
    p = y * y
    err = ((hi * hi - p) + 2 * hi * lo) + lo * lo
    residual = (x - p) - err
    fixed = torch.where(y > 0, y + residual / (2 * y), y)
    fixed = torch.where(torch.isfinite(y), fixed, y)
    return fixed.to(dtype)
