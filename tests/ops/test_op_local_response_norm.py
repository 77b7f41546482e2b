"""fastdistill::local_response_norm: kernel vs torch's formula, derivatives to second order,
gradcheck, opcheck, bad inputs. CPU kernel only (CUDA runs the reference)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fd_op_utils import make

from fastdistill import ops
from fastdistill.ops import reference

# (shape, size): channel counts below, at and above the window, 3-D to 5-D inputs, blocks of
# the trailing positions that do not divide evenly
CASES = [
    ((2, 64, 16, 16), 4),
    ((3, 5, 7, 9), 4),
    ((2, 3, 300), 5),
    ((1, 2, 4, 4), 4),
    ((4, 7, 3, 2, 5), 3),
    ((2, 6, 17, 1), 1),
    ((2, 9, 600), 2),
]
PARAMS = [(1e-3 / 9, 0.75, 1.0), (0.5, 0.75, 2.0), (1.3, 0.6, 1.5), (1e-4, 1.0, 0.5)]


def _tol(dtype):
    return (
        {"rtol": 2e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-11, "atol": 1e-13}
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape, size", CASES, ids=str)
@pytest.mark.parametrize("alpha, beta, k", PARAMS)
def test_kernel_matches_torch_value_and_gradient(kernels, dtype, shape, size, alpha, beta, k):
    x = make(shape, dtype, seed=1, scale=3.0)
    g = make(shape, dtype, seed=2)
    want = F.local_response_norm(x, size, alpha, beta, k)
    torch.testing.assert_close(
        kernels.local_response_norm(x, size, alpha, beta, k), want, **_tol(dtype)
    )
    xr = x.clone().requires_grad_()
    (want_g,) = torch.autograd.grad(F.local_response_norm(xr, size, alpha, beta, k), xr, g)
    got_g = kernels.local_response_norm_backward(g, x, size, alpha, beta, k)
    torch.testing.assert_close(got_g, want_g, **_tol(dtype))
    ref_g = reference.local_response_norm_backward(g, x, size, alpha, beta, k)
    torch.testing.assert_close(ref_g, want_g, **_tol(dtype))


def test_non_contiguous_and_empty_inputs(kernels):
    base = make((3, 8, 10, 12), torch.float32, seed=3)
    x = base.transpose(2, 3)  # strided
    torch.testing.assert_close(
        kernels.local_response_norm(x, 4, 0.1, 0.75, 1.0),
        F.local_response_norm(x, 4, 0.1, 0.75, 1.0),
    )
    g = make((3, 8, 12, 10), torch.float32, seed=4)[:, :, :, :]
    xr = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(
        F.local_response_norm(xr, 4, 0.1, 0.75, 1.0),
        xr,
        g.transpose(2, 3).contiguous().transpose(2, 3),
    )
    got = kernels.local_response_norm_backward(
        g.transpose(2, 3).contiguous().transpose(2, 3), x, 4, 0.1, 0.75, 1.0
    )
    torch.testing.assert_close(got, want)
    empty = torch.zeros(0, 4, 3, 3)
    assert kernels.local_response_norm(empty, 4, 0.1, 0.75, 1.0).shape == empty.shape


def test_public_op_uses_the_kernel_and_matches_torch_to_second_order(kernels):
    """Value, gradient and a Hessian-vector product (what the adjoint engine asks for)."""
    x = make((3, 6, 5, 5), torch.float64, seed=5, scale=2.0)
    v = make((3, 6, 5, 5), torch.float64, seed=6)
    args = (4, 0.3, 0.75, 1.0)

    def hvp(fn):
        xr = x.clone().requires_grad_()
        loss = (fn(xr, *args) ** 2).sum()
        (g,) = torch.autograd.grad(loss, xr, create_graph=True)
        (h,) = torch.autograd.grad((g * v).sum(), xr)
        return loss.detach(), g.detach(), h

    got = hvp(ops.local_response_norm)
    assert ops.last_backend("local_response_norm").backend == "kernel"
    for a, b in zip(got, hvp(F.local_response_norm)):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


def test_gradcheck_through_kernel_and_its_backward(kernels):
    x = make((2, 5, 3, 4), torch.float64, seed=7).requires_grad_()
    g = make((2, 5, 3, 4), torch.float64, seed=8).requires_grad_()
    fn = lambda t: ops.local_response_norm(t, 3, 0.7, 0.75, 1.5)
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,), (g,))
    back = lambda gy, t: kernels.local_response_norm_backward(gy, t, 3, 0.7, 0.75, 1.5)
    assert torch.autograd.gradcheck(back, (g, x))


def test_opcheck(kernels):
    x = make((2, 6, 4, 4), torch.float32, seed=9).requires_grad_()
    torch.library.opcheck(kernels.local_response_norm.default, (x, 4, 0.1, 0.75, 1.0))
    g = make((2, 6, 4, 4), torch.float32, seed=10)
    torch.library.opcheck(
        kernels.local_response_norm_backward.default,
        (g, x.detach(), 4, 0.1, 0.75, 1.0),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_half_inputs_compute_in_float32():
    x = make((2, 4, 3, 3), torch.float32, seed=11).to(torch.bfloat16)
    y = ops.local_response_norm(x, 2, 0.2, 0.75, 1.0)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(
        y.float(), F.local_response_norm(x.float(), 2, 0.2, 0.75, 1.0), rtol=1e-2, atol=1e-2
    )


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((torch.zeros(2, 3), 2, 0.1, 0.75, 1.0), ValueError, "3 or more dimensions"),
        ((torch.zeros(2, 3, 4), 0, 0.1, 0.75, 1.0), ValueError, "`size` must be >= 1"),
        ((torch.zeros(2, 3, 4), 2, float("nan"), 0.75, 1.0), ValueError, "must be finite"),
        ((torch.zeros(2, 3, 4, dtype=torch.int64), 2, 0.1, 0.75, 1.0), TypeError, "dtype"),
    ],
)
def test_bad_inputs_fail_alike_on_both_paths(kernels, args, exc, match):
    with pytest.raises(exc, match=match):
        ops.local_response_norm(*args)
    if args[0].dtype == torch.float32:
        with pytest.raises(exc, match=match):
            kernels.local_response_norm(*args)


def test_vmap_over_nets_folds_into_samples(kernels):
    """The batched-nets engine vmaps the model: [B, N, C, ...] in one kernel call."""
    x = make((3, 2, 6, 4, 4), torch.float32, seed=12)
    got = torch.vmap(lambda t: ops.local_response_norm(t, 4, 0.1, 0.75, 1.0))(x)
    want = torch.stack([F.local_response_norm(t, 4, 0.1, 0.75, 1.0) for t in x])
    torch.testing.assert_close(got, want)
    g = make((3, 2, 6, 4, 4), torch.float32, seed=13)
    back = torch.vmap(lambda gy, t: kernels.local_response_norm_backward(gy, t, 4, 0.1, 0.75, 1.0))
    flat = kernels.local_response_norm_backward(g.flatten(0, 1), x.flatten(0, 1), 4, 0.1, 0.75, 1.0)
    torch.testing.assert_close(back(g, x), flat.view_as(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape, size", CASES, ids=str)
@pytest.mark.parametrize("alpha, beta, k", PARAMS)
def test_second_derivative_kernel_matches_reference(kernels, dtype, shape, size, alpha, beta, k):
    x = make(shape, dtype, seed=21, scale=3.0)
    g = make(shape, dtype, seed=22)
    u = make(shape, dtype, seed=23)
    want = reference.local_response_norm_backward_backward(g, x, u, size, alpha, beta, k)
    got = kernels.local_response_norm_backward_backward(g, x, u, size, alpha, beta, k)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else _tol(dtype)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_hessian_vector_product_takes_the_second_derivative_kernel(kernels):
    """What the adjoint asks: grad with create_graph, then a vector-Jacobian product of it."""
    x = make((3, 8, 5, 5), torch.float64, seed=24, scale=2.0).requires_grad_()
    w = make((3, 8, 5, 5), torch.float64, seed=25)
    v = make((3, 8, 5, 5), torch.float64, seed=26)

    def hvp(fn):
        (g,) = torch.autograd.grad((fn(x, 4, 0.3, 0.75, 1.0) * w).sum(), x, create_graph=True)
        return torch.autograd.grad((g * v).sum(), x)[0]

    got = hvp(ops.local_response_norm)
    assert ops.last_backend("local_response_norm_backward_backward").backend == "kernel"
    torch.testing.assert_close(got, hvp(F.local_response_norm), rtol=1e-11, atol=1e-13)


def test_third_derivatives_still_flow_through_the_reference(kernels):
    x = make((2, 5, 3, 3), torch.float64, seed=27).requires_grad_()
    g = make((2, 5, 3, 3), torch.float64, seed=28).requires_grad_()
    back = lambda gy, t: kernels.local_response_norm_backward(gy, t, 3, 0.7, 0.75, 1.5)
    assert torch.autograd.gradgradcheck(back, (g, x))


def test_second_derivative_opcheck_and_vmap(kernels):
    x, g, u = (make((2, 6, 4, 4), torch.float32, seed=s) for s in (29, 30, 31))
    op = kernels.local_response_norm_backward_backward
    torch.library.opcheck(
        op.default, (g, x, u, 4, 0.1, 0.75, 1.0), test_utils=("test_schema", "test_faketensor")
    )
    xb, gb, ub = (make((3, 2, 6, 4, 4), torch.float32, seed=s) for s in (32, 33, 34))
    got = torch.vmap(lambda a, b, c: op(a, b, c, 4, 0.1, 0.75, 1.0))(gb, xb, ub)
    flat = op(gb.flatten(0, 1), xb.flatten(0, 1), ub.flatten(0, 1), 4, 0.1, 0.75, 1.0)
    for a, b in zip(got, flat, strict=True):
        torch.testing.assert_close(a, b.view_as(a))
