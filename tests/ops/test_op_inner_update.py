"""fastdistill::inner_update: kernels vs reference, layouts, autograd, opcheck, bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fd_op_utils import ALL_DTYPES, DEVICES, DTYPES, assert_elementwise, make

from fastdistill import ops
from fastdistill.ops import reference

SHAPES = [(1, 1), (3, 17), (4, 61706), (2, 3, 5), (7,), (32, 1025)]
RAWS = [-30.0, -2.0, 0.0, 0.5413, 3.0, 25.0]


def truth(w, g, raw):
    """float64 value and error scale of w - softplus(raw) * g."""
    w64, g64 = w.double().cpu(), g.double().cpu()
    lr = torch.logaddexp(raw.double().cpu(), torch.tensor(0.0, dtype=torch.float64))
    return w64 - lr * g64, w64.abs() + lr * g64.abs()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernel_and_reference_match_truth(kernels, device, dtype, shape):
    w = make(shape, dtype, device, seed=1)
    g = make(shape, dtype, device, seed=2)
    for raw_value in RAWS:
        raw = torch.tensor(raw_value, dtype=dtype, device=device)
        expected, scale = truth(w, g, raw)
        out = kernels.inner_update(w, g, raw)
        assert out.is_contiguous() and out.device == w.device
        assert_elementwise(out, expected, scale, dtype)
        assert_elementwise(reference.inner_update(w, g, raw), expected, scale, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_public_wrapper_uses_kernel(kernels, device, dtype):
    w, g = make((5, 301), dtype, device, 1), make((5, 301), dtype, device, 2)
    raw = torch.tensor(0.3, dtype=dtype, device=device)
    out = ops.inner_update(w, g, raw)
    choice = ops.last_backend("inner_update")
    assert choice.backend == "kernel" and choice.device == torch.device(device).type
    torch.testing.assert_close(out, reference.inner_update(w, g, raw))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_inputs(kernels, device, dtype):
    base_w = make((61, 40), dtype, device, 1)
    base_g = make((70, 122), dtype, device, 2)
    raw = torch.tensor(-0.7, dtype=dtype, device=device)
    cases = [
        (base_w.t(), base_g[:40, ::2]),  # transposed / strided
        (base_w[:, 1:], base_g[:61, 3:42]),  # offset views (unaligned data pointers)
        (base_w.t()[:, 5:17].expand(3, 40, 12)[1], base_g[:40, :12]),  # expanded
    ]
    for w, g in cases:
        assert not (w.is_contiguous() and g.is_contiguous())
        expected, scale = truth(w, g, raw)
        assert_elementwise(kernels.inner_update(w, g, raw), expected, scale, dtype)
        assert_elementwise(ops.inner_update(w, g, raw), expected, scale, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 10), (4, 0), (0,)], ids=str)
def test_empty(kernels, device, shape):
    w = torch.empty(shape, device=device)
    raw = torch.tensor(0.1, device=device)
    out = kernels.inner_update(w, torch.empty_like(w), raw)
    assert out.shape == w.shape and out.numel() == 0
    assert ops.inner_update(w, torch.empty_like(w), raw).shape == w.shape


@pytest.mark.parametrize("device", DEVICES)
def test_large(kernels, device):
    shape = (4, 1_000_000)
    w, g = make(shape, torch.float32, device, 1), make(shape, torch.float32, device, 2)
    raw = torch.tensor(0.25, device=device)
    expected, scale = truth(w, g, raw)
    assert_elementwise(kernels.inner_update(w, g, raw), expected, scale, torch.float32)


def test_float_raw_lr_and_casting(kernels):
    w, g = make((3, 8), torch.float64, "cpu", 1), make((3, 8), torch.float64, "cpu", 2)
    expected = reference.inner_update(w, g, torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(ops.inner_update(w, g, 0.5), expected)
    # a float32 step size is cast to w's dtype (differentiably)
    raw32 = torch.tensor(0.5, requires_grad=True)
    out = ops.inner_update(w, g, raw32)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert raw32.grad is not None and raw32.grad.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["kernel", "reference"])
def test_gradcheck_float64(kernels, device, backend):
    if backend == "reference":
        ops.set_backend("reference")
    kw = {"dtype": torch.float64, "device": device}
    w = make((3, 7), torch.float64, device, 1).requires_grad_()
    g = make((3, 7), torch.float64, device, 2).requires_grad_()
    raw = torch.tensor(0.3, **kw, requires_grad=True)
    assert torch.autograd.gradcheck(ops.inner_update, (w, g, raw))
    assert torch.autograd.gradgradcheck(ops.inner_update, (w, g, raw))
    assert ops.last_backend("inner_update").backend == backend
    # partial requires_grad
    g2 = g.detach()
    assert torch.autograd.gradcheck(lambda a, r: ops.inner_update(a, g2, r), (w, raw))


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_match_reference(kernels, device):
    def grads(fn):
        w = make((4, 50), torch.float64, device, 1).requires_grad_()
        g = make((4, 50), torch.float64, device, 2).requires_grad_()
        raw = torch.tensor(-1.3, dtype=torch.float64, device=device, requires_grad=True)
        out = fn(w, g, raw)
        (out * make((4, 50), torch.float64, device, 3)).sum().backward()
        return w.grad, g.grad, raw.grad

    for a, b in zip(grads(kernels.inner_update), grads(reference.inner_update)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(kernels, device, requires_grad):
    for dtype in DTYPES:
        w = make((3, 10), dtype, device, 1).requires_grad_(requires_grad)
        g = make((3, 10), dtype, device, 2).requires_grad_(requires_grad)
        raw = torch.tensor(0.2, dtype=dtype, device=device, requires_grad=requires_grad)
        torch.library.opcheck(kernels.inner_update.default, (w, g, raw))
    torch.library.opcheck(kernels.inner_update.default, (w.detach().t(), g.detach().t(), raw))


def test_vmap(kernels):
    w, g = make((5, 3, 20), torch.float64, seed=1), make((5, 3, 20), torch.float64, seed=2)
    raw = torch.tensor(0.4, dtype=torch.float64)
    raws = make((5,), torch.float64, seed=3)
    expected = reference.inner_update(w, g, raw)
    torch.testing.assert_close(torch.vmap(ops.inner_update, (0, 0, None))(w, g, raw), expected)
    torch.testing.assert_close(
        torch.vmap(ops.inner_update, (None, 0, None))(w[0], g, raw),
        reference.inner_update(w[0].expand_as(g), g, raw),
    )
    torch.testing.assert_close(
        torch.vmap(ops.inner_update)(w, g, raws),
        w - F.softplus(raws)[:, None, None] * g,
    )


def test_meta(kernels):
    w = torch.empty((4, 9), device="meta")
    out = ops.inner_update(w, torch.empty_like(w), torch.empty((), device="meta"))
    assert out.shape == (4, 9) and out.device.type == "meta"


# -------------------------------------------------------------------------------- bad inputs
def _bad_cases(device):
    f32 = {"dtype": torch.float32, "device": device}
    w = torch.zeros(2, 3, **f32)
    raw = torch.tensor(0.1, **f32)
    return [
        ((w.long(), w.long(), raw.long()), TypeError, r"`w` must have dtype float32"),
        ((w, torch.zeros(2, 4, **f32), raw), ValueError, r"`g` must have the same shape"),
        ((w, w.double(), raw), TypeError, r"`g` must have the same dtype"),
        ((w, w, torch.zeros(1, **f32)), ValueError, r"`raw_lr` must be a 0-d tensor"),
        ((w, w, raw.double()), TypeError, r"`raw_lr` must have the same dtype"),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_kernel_and_reference_alike(kernels, device):
    for args, exc, pattern in _bad_cases(device):
        with pytest.raises(exc, match=pattern):
            kernels.inner_update(*args)
        with pytest.raises(exc, match=pattern):
            reference.inner_update(*args)


def test_bad_inputs_public_wrapper(kernels):
    with pytest.raises(ValueError, match=r"`g` must have the same shape"):
        ops.inner_update(torch.zeros(2, 3), torch.zeros(3, 2), 0.1)
    with pytest.raises(TypeError, match=r"`w` must have dtype"):
        ops.inner_update(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, 3), 0.1)
    with pytest.raises(TypeError, match=r"`w` must be a torch.Tensor"):
        ops.set_backend("reference")
        ops.inner_update([1.0], torch.zeros(1), 0.1)


@pytest.mark.cuda
def test_device_mismatch_cuda(kernels):
    w = torch.zeros(2, 3, device="cuda")
    raw = torch.tensor(0.1, device="cuda")
    with pytest.raises(ValueError, match=r"`g` must be on the same device"):
        kernels.inner_update(w, w.cpu(), raw)
    with pytest.raises(ValueError, match=r"`g` must be on the same device"):
        ops.inner_update(w, w.cpu(), raw)
    with pytest.raises(ValueError, match=r"`raw_lr` must be on the same device"):
        kernels.inner_update(w, w, raw.cpu())
    # the public wrapper moves a CPU step size to w's device
    torch.testing.assert_close(ops.inner_update(w, w, raw.cpu()), reference.inner_update(w, w, raw))
