"""Kernels vs pure-PyTorch reference for the fused update ops, on a LeNet-sized flat buffer
(P = 61706 parameters) of B = 1 or 32 nets. Each (op, device, B) is one benchmark group, so the
implementations appear side by side:

* ``kernel``: ``torch.ops.fastdistill.<op>`` (one fused pass),
* ``reference``: ``fastdistill.ops.reference.<op>`` (what the ops fall back to),
* ``eager``: what a user would write by hand (inner_update: ``torch.add(w, g, alpha=-lr)`` with a
  Python float lr, which costs a device sync on GPU; adjoint_update: two separate expressions).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastdistill import _extension
from fastdistill.ops import reference

P_LENET = 61706
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _sync(device: str):
    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _kernels():
    if not _extension.load():
        pytest.skip(f"extension not loaded: {_extension.backend_info()['reason']}")
    return torch.ops.fastdistill


def _inputs(n: int, B: int, device: str):
    gen = torch.Generator().manual_seed(0)
    ts = [torch.randn(B, P_LENET, generator=gen).to(device) for _ in range(n)]
    return ts, torch.tensor(0.02, device=device)


def _run(benchmark, fn, device):
    sync = _sync(device)
    fn()  # warm-up (allocator, lazy init)
    sync()

    def call():
        fn()
        sync()

    benchmark(call)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B", [1, 32])
@pytest.mark.parametrize("impl", ["kernel", "reference", "eager"])
def test_inner_update(benchmark, impl, B, device):
    benchmark.group = f"inner_update {device} B={B} P={P_LENET}"
    (w, g), raw = _inputs(2, B, device)
    if impl == "kernel":
        op = _kernels().inner_update.default
        fn = lambda: op(w, g, raw)
    elif impl == "reference":
        fn = lambda: reference.inner_update(w, g, raw)
    else:
        fn = lambda: torch.add(w, g, alpha=-float(F.softplus(raw)))
    _run(benchmark, fn, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B", [1, 32])
@pytest.mark.parametrize("impl", ["kernel", "reference", "eager"])
def test_adjoint_update(benchmark, impl, B, device):
    benchmark.group = f"adjoint_update {device} B={B} P={P_LENET}"
    (v, hv, g), raw = _inputs(3, B, device)
    if impl == "kernel":
        op = _kernels().adjoint_update.default
        fn = lambda: op(v, hv, g, raw)
    elif impl == "reference":
        fn = lambda: reference.adjoint_update(v, hv, g, raw)
    else:

        def fn():
            return v - F.softplus(raw) * hv, -torch.dot(g.reshape(-1), v.reshape(-1))

    _run(benchmark, fn, device)
