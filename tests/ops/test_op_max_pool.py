"""fastdistill::max_pool2d: kernel vs ATen (values, indices, ties, NaN, -inf), derivatives to
second order, gradcheck, opcheck, vmap, bad inputs, and the model layer that uses it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fd_op_utils import make

from fastdistill import ops
from fastdistill.models.image import MaxPool2d

# (shape, kernel, stride, padding): AlexCifarNet's 3/2/1, LeNet's 2/2/0, uneven sides and
# strides, a window as large as the padded plane, 3-D input, empty batch
CASES = [
    ((2, 3, 32, 32), (3, 3), (2, 2), (1, 1)),
    ((3, 4, 16, 16), (3, 3), (2, 2), (1, 1)),
    ((2, 5, 28, 28), (2, 2), (2, 2), (0, 0)),
    ((1, 2, 7, 9), (3, 2), (1, 3), (1, 1)),
    ((2, 3, 5, 6), (5, 4), (2, 1), (2, 2)),
    ((4, 11, 13), (3, 3), (3, 2), (0, 1)),
    ((2, 1, 1, 1), (1, 1), (1, 1), (0, 0)),
    ((0, 3, 8, 8), (3, 3), (2, 2), (1, 1)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape, k, s, p", CASES, ids=str)
def test_kernel_matches_aten_values_and_indices(kernels, dtype, shape, k, s, p):
    x = make(shape, dtype, seed=1).relu()  # ReLU output: many tied zeros
    if x.numel():
        x.view(-1)[:: max(1, x.numel() // 7)] = float("nan")
        x.view(-1)[3 :: max(1, x.numel() // 5)] = float("-inf")
    want, want_i = torch.ops.aten.max_pool2d_with_indices(x, k, s, p)
    got, got_i = kernels.max_pool2d(x, k, s, p)
    torch.testing.assert_close(got, want, equal_nan=True, rtol=0, atol=0)
    assert torch.equal(got_i, want_i)


def test_all_minus_infinity_windows_pick_aten_index(kernels):
    x = torch.full((1, 1, 5, 5), float("-inf"))
    want = torch.ops.aten.max_pool2d_with_indices(x, (3, 3), (2, 2), (1, 1))
    got = kernels.max_pool2d(x, (3, 3), (2, 2), (1, 1))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_public_op_matches_torch_to_second_order(kernels):
    x = make((3, 4, 9, 9), torch.float64, seed=2).requires_grad_()
    w = make((3, 4, 5, 5), torch.float64, seed=3)
    v = make((3, 4, 9, 9), torch.float64, seed=4)

    def hvp(fn):
        y = fn(x, 3, 2, 1)
        (g,) = torch.autograd.grad(((y * w).sum()) ** 2, x, create_graph=True)
        (h,) = torch.autograd.grad((g * v).sum(), x)
        return y.detach(), g.detach(), h

    got = hvp(ops.max_pool2d)
    assert ops.last_backend("max_pool2d").backend == "kernel"
    for a, b in zip(got, hvp(F.max_pool2d), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gradcheck_and_opcheck(kernels):
    x = make((2, 3, 6, 6), torch.float64, seed=5).requires_grad_()
    fn = lambda t: ops.max_pool2d(t, 3, 2, 1)
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
    xf = make((2, 3, 8, 8), torch.float32, seed=6).requires_grad_()
    torch.library.opcheck(kernels.max_pool2d.default, (xf, [3, 3], [2, 2], [1, 1]))


def test_vmap_over_nets_folds_into_planes(kernels):
    x = make((3, 2, 4, 8, 8), torch.float32, seed=7)
    got = torch.vmap(lambda t: ops.max_pool2d(t, 3, 2, 1))(x)
    want = torch.stack([F.max_pool2d(t, 3, 2, 1) for t in x])
    assert torch.equal(got, want)


def test_model_layer_matches_nn_max_pool(kernels):
    x = make((2, 3, 10, 10), torch.float32, seed=8).requires_grad_()
    for args in ((3, 2, 1), (2,), (3, 1, 0)):
        a, b = MaxPool2d(*args)(x), torch.nn.MaxPool2d(*args)(x)
        assert torch.equal(a, b)
        ga = torch.autograd.grad(a.square().sum(), x)[0]
        gb = torch.autograd.grad(b.square().sum(), x)[0]
        assert torch.equal(ga, gb)
    ceil = MaxPool2d(3, 2, 1, ceil_mode=True)  # not the kernel's case: torch's own path
    assert torch.equal(ceil(x), F.max_pool2d(x, 3, 2, 1, ceil_mode=True))


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((torch.zeros(2, 3), [2, 2], [2, 2], [0, 0]), ValueError, r"\[C, H, W\] or"),
        ((torch.zeros(1, 2, 4, 4), [0, 2], [2, 2], [0, 0]), ValueError, "must be >= 1"),
        ((torch.zeros(1, 2, 4, 4), [2, 2], [2, 2], [2, 0]), ValueError, "half the kernel"),
        ((torch.zeros(1, 2, 2, 2), [5, 5], [1, 1], [1, 1]), ValueError, "smaller than"),
        ((torch.zeros(1, 2, 4, 4, dtype=torch.int64), [2, 2], [2, 2], [0, 0]), TypeError, "dtype"),
    ],
)
def test_bad_inputs_fail_alike_on_both_paths(kernels, args, exc, match):
    with pytest.raises(exc, match=match):
        kernels.max_pool2d(*args)
    with pytest.raises(exc, match=match):
        ops.reference.max_pool2d(*args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape, k, s, p", CASES, ids=str)
def test_backward_kernel_matches_aten_bit_for_bit(kernels, dtype, shape, k, s, p):
    x = make(shape, dtype, seed=9).relu()
    y, idx = kernels.max_pool2d(x, k, s, p)
    g = make(tuple(y.shape), dtype, seed=10)
    want = torch.ops.aten.max_pool2d_with_indices_backward(g, x, k, s, p, [1, 1], False, idx)
    assert torch.equal(kernels.max_pool2d_backward(g, idx, x), want)


def test_backward_kernel_rejects_bad_indices(kernels):
    x = torch.zeros(1, 2, 4, 4)
    y, idx = kernels.max_pool2d(x, [2, 2], [2, 2], [0, 0])
    idx[0, 1, 1, 1] = 16
    with pytest.raises(ValueError, match="outside the 16-element plane"):
        kernels.max_pool2d_backward(torch.ones_like(y), idx, x)
    with pytest.raises(ValueError, match="pooled shape"):
        kernels.max_pool2d_backward(torch.ones(1, 2, 3, 3), idx, x)


def test_backward_opcheck(kernels):
    x = make((2, 3, 8, 8), torch.float32, seed=11)
    y, idx = kernels.max_pool2d(x, [3, 3], [2, 2], [1, 1])
    g = make(tuple(y.shape), torch.float32, seed=12).requires_grad_()
    torch.library.opcheck(kernels.max_pool2d_backward.default, (g, idx, x))
