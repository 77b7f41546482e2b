"""fastdistill::adjoint_update: kernels vs reference, layouts, determinism, opcheck, errors."""

from __future__ import annotations

import pytest
import torch
from fd_op_utils import (
    ALL_DTYPES,
    DEVICES,
    DTYPES,
    assert_elementwise,
    assert_sum,
    make,
)

from fastdistill import ops
from fastdistill.ops import reference

SHAPES = [(1, 1), (3, 17), (4, 61706), (2, 3, 5), (7,), (32, 1025), (1, 2049)]
RAWS = [-30.0, 0.0, 0.5413, 25.0]


def truth(v, hv, g, raw):
    """float64 v_new, its error scale, dlr, and sum |g v| (the reduction's error scale)."""
    v64, hv64, g64 = (t.double().cpu() for t in (v, hv, g))
    lr = torch.logaddexp(raw.double().cpu(), torch.tensor(0.0, dtype=torch.float64))
    prod = g64 * v64
    return v64 - lr * hv64, v64.abs() + lr * hv64.abs(), -prod.sum(), float(prod.abs().sum())


def check(fn, v, hv, g, raw, dtype):
    v_new, dlr = fn(v, hv, g, raw)
    e_v, scale, e_dlr, l1 = truth(v, hv, g, raw)
    assert_elementwise(v_new, e_v, scale, dtype)
    assert_sum(dlr, e_dlr, l1, dtype)
    assert dlr.device == v.device
    return v_new, dlr


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernel_and_reference_match_truth(kernels, device, dtype, shape):
    v, hv, g = (make(shape, dtype, device, seed=s) for s in (1, 2, 3))
    for raw_value in RAWS:
        raw = torch.tensor(raw_value, dtype=dtype, device=device)
        v_new, _ = check(kernels.adjoint_update, v, hv, g, raw, dtype)
        assert v_new.is_contiguous()
        check(reference.adjoint_update, v, hv, g, raw, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_public_wrapper_uses_kernel(kernels, device, dtype):
    v, hv, g = (make((6, 333), dtype, device, seed=s) for s in (1, 2, 3))
    raw = torch.tensor(0.3, dtype=dtype, device=device)
    check(ops.adjoint_update, v, hv, g, raw, dtype)
    choice = ops.last_backend("adjoint_update")
    assert choice.backend == "kernel" and choice.device == torch.device(device).type


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_inputs(kernels, device, dtype):
    a = make((50, 80), dtype, device, 1)
    b = make((80, 120), dtype, device, 2)
    c = make((60, 81), dtype, device, 3)
    raw = torch.tensor(-0.7, dtype=dtype, device=device)
    v = a.t()[:, :49]  # transposed
    hv = b[:, ::2][:, 1:50]  # strided, offset
    g = c[:1, 1:50].expand(80, 49)  # stride-0 rows
    assert v.shape == hv.shape == g.shape == (80, 49)
    assert not (v.is_contiguous() or hv.is_contiguous() or g.is_contiguous())
    check(kernels.adjoint_update, v, hv, g, raw, dtype)
    check(ops.adjoint_update, v, hv, g, raw, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 10), (4, 0), (0,)], ids=str)
def test_empty(kernels, device, shape):
    v = torch.empty(shape, device=device)
    raw = torch.tensor(0.1, device=device)
    for fn in (kernels.adjoint_update, ops.adjoint_update, reference.adjoint_update):
        v_new, dlr = fn(v, v, v, raw)
        assert v_new.shape == v.shape and dlr.shape == () and float(dlr) == 0.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large(kernels, device, dtype):
    v, hv, g = (make((4, 1_000_000), dtype, device, seed=s) for s in (1, 2, 3))
    check(kernels.adjoint_update, v, hv, g, torch.tensor(0.25, dtype=dtype, device=device), dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(kernels, device):
    v, hv, g = (make((8, 300_001), torch.float32, device, seed=s) for s in (1, 2, 3))
    raw = torch.tensor(0.3, device=device)
    first = kernels.adjoint_update(v, hv, g, raw)
    threads = torch.get_num_threads()
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            again = kernels.adjoint_update(v, hv, g, raw)
            assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("device", DEVICES)
def test_not_differentiable(kernels, device):
    v, hv, g = (make((3, 5), torch.float64, device, seed=s) for s in (1, 2, 3))
    raw = torch.tensor(0.3, dtype=torch.float64, device=device)
    for backend in ("kernels", "reference"):
        ops.set_backend(backend)
        v_new, dlr = ops.adjoint_update(v.requires_grad_(), hv, g, raw)
        with pytest.raises(RuntimeError, match="adjoint_update is not differentiable"):
            (v_new.sum() + dlr).backward()
        # no grad wanted: plain tensors out
        with torch.no_grad():
            v_new, dlr = ops.adjoint_update(v, hv, g, raw)
        assert not v_new.requires_grad and not dlr.requires_grad
        v.requires_grad_(False)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(kernels, device):
    for dtype in DTYPES:
        v, hv, g = (make((3, 10), dtype, device, seed=s) for s in (1, 2, 3))
        raw = torch.tensor(0.2, dtype=dtype, device=device)
        torch.library.opcheck(kernels.adjoint_update.default, (v, hv, g, raw))
        torch.library.opcheck(kernels.adjoint_update.default, (v.t(), hv.t(), g.t(), raw))


def test_meta(kernels):
    v = torch.empty((4, 9), device="meta")
    v_new, dlr = ops.adjoint_update(v, v, v, torch.empty((), device="meta"))
    assert v_new.shape == (4, 9) and dlr.shape == () and dlr.device.type == "meta"


# -------------------------------------------------------------------------------- bad inputs
def _bad_cases(device):
    f32 = {"dtype": torch.float32, "device": device}
    v = torch.zeros(2, 3, **f32)
    raw = torch.tensor(0.1, **f32)
    return [
        ((v.int(), v.int(), v.int(), raw.int()), TypeError, r"`v` must have dtype float32"),
        ((v, torch.zeros(3, 2, **f32), v, raw), ValueError, r"`hv` must have the same shape"),
        ((v, v, torch.zeros(2, 4, **f32), raw), ValueError, r"`g` must have the same shape"),
        ((v, v, v.double(), raw), TypeError, r"`g` must have the same dtype"),
        ((v, v, v, torch.zeros(2, **f32)), ValueError, r"`raw_lr` must be a 0-d tensor"),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_kernel_and_reference_alike(kernels, device):
    for args, exc, pattern in _bad_cases(device):
        with pytest.raises(exc, match=pattern):
            kernels.adjoint_update(*args)
        with pytest.raises(exc, match=pattern):
            reference.adjoint_update(*args)
        with pytest.raises(exc, match=pattern):
            ops.adjoint_update(*args)


@pytest.mark.cuda
def test_device_mismatch_cuda(kernels):
    v = torch.zeros(2, 3, device="cuda")
    raw = torch.tensor(0.1, device="cuda")
    with pytest.raises(ValueError, match=r"`hv` must be on the same device"):
        kernels.adjoint_update(v, v.cpu(), v, raw)
    with pytest.raises(ValueError, match=r"`raw_lr` must be on the same device"):
        kernels.adjoint_update(v, v, v, raw.cpu())
