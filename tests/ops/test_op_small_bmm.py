"""fastdistill::small_bmm: the small-product kernels vs a float64 truth over shapes (every tail
of the register blocks), operand layouts (each kernel and the library fallback), bias and
accumulate; thread-count independence, opcheck, bad inputs; derivatives to second order, vmap,
and ``fastdistill.ops.linear`` on top of it."""

from __future__ import annotations

import pytest
import torch
from fd_op_utils import DEVICES, DTYPES, assert_elementwise, make

from fastdistill import ops
from fastdistill.ops import reference

# (B, M, K, N): LeNet's per-step linear layers, every row/column/k tail of the 4-row blocks,
# 16/32-column vectors and 16-lane k steps, and one product past the small-kernel limit.
SHAPES = [
    (1, 10, 400, 120),
    (1, 10, 120, 84),
    (1, 10, 84, 10),
    (1, 1, 1, 1),
    (3, 5, 17, 33),
    (2, 9, 15, 16),
    (2, 4, 16, 31),
    (4, 7, 33, 2),
    (1, 120, 10, 400),
    (1, 1030, 520, 126),  # 2^26 + multiply-adds: the library GEMM
]
LAYOUTS = ["rows", "dot", "a_transposed", "a_expanded", "m_strided"]


def operands(shape, layout, dtype, device):
    """a [B, M, K] and m [B, K, N] in the named memory layout."""
    b, rows, k, n = shape
    if layout == "a_transposed":  # a = d^T (unit stride along M): the weight-gradient product
        a = make((b, k, rows), dtype, device, 1).transpose(1, 2)
    elif layout == "a_expanded":  # one batch shared by B nets (stride 0)
        a = make((1, rows, k), dtype, device, 1).expand(b, rows, k)
    else:
        a = make((b, rows, k), dtype, device, 1)
    if layout == "dot":  # m = W^T: unit stride along K on both operands
        m = make((b, n, k), dtype, device, 2).transpose(1, 2)
    elif layout == "m_strided":  # no unit stride anywhere: the library GEMM
        m = make((b, k, 2 * n), dtype, device, 2)[:, :, ::2]
    else:
        m = make((b, k, n), dtype, device, 2)
    return a, m


def truth(a, m, add):
    a64, m64 = a.double().cpu(), m.double().cpu()
    value, scale = torch.bmm(a64, m64), torch.bmm(a64.abs(), m64.abs())
    if add is not None:
        value, scale = value + add.double().cpu(), scale + add.double().cpu().abs()
    return value, scale


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernel_and_reference_match_truth(kernels, device, dtype, layout, shape):
    a, m = operands(shape, layout, dtype, device)
    b, rows, _, n = shape
    bias = make((b, n), dtype, device, 3)
    acc = make((b, rows, n), dtype, device, 4)
    for kw, add in (({}, None), ({"bias": bias}, bias[:, None, :]), ({"acc": acc}, acc)):
        expected, scale = truth(a, m, add)
        out = kernels.small_bmm(a, m, kw.get("bias"), kw.get("acc"))
        assert out.is_contiguous() and out.device == a.device
        k_bound = 2.0 * (shape[2] + 1)  # a K-term sum, any summation order
        assert_elementwise(out, expected, scale, dtype, k=k_bound)
        assert_elementwise(reference.small_bmm(a, m, **kw), expected, scale, dtype, k=k_bound)


def test_accumulate_leaves_acc_untouched(kernels):
    a, m = operands((2, 6, 20, 18), "rows", torch.float32, "cpu")
    acc = make((2, 6, 18), torch.float32, "cpu", 4)
    before = acc.clone()
    out = kernels.small_bmm(a, m, None, acc)
    assert torch.equal(acc, before) and not torch.equal(out, before)


@pytest.mark.parametrize("layout", ["rows", "dot"])
def test_same_bits_at_any_thread_count(kernels, layout):
    """Large enough to split across threads: each block is summed in one fixed order."""
    a, m = operands((4, 40, 120, 84), layout, torch.float32, "cpu")
    bias = make((4, 84), torch.float32, "cpu", 3)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.small_bmm(a, m, bias, None)
        torch.set_num_threads(2)
        two = kernels.small_bmm(a, m, bias, None)
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(one, two)


@pytest.mark.parametrize("device", DEVICES)
def test_public_wrapper_uses_kernel(kernels, device):
    a, m = operands((1, 10, 84, 10), "dot", torch.float64, device)
    out = ops.small_bmm(a, m)
    assert ops.last_backend("small_bmm").backend == "kernel"
    torch.testing.assert_close(out, torch.bmm(a, m), rtol=1e-12, atol=1e-12)
    ops.set_backend("reference")
    torch.testing.assert_close(ops.small_bmm(a, m), out, rtol=1e-12, atol=1e-12)
    assert ops.last_backend("small_bmm").backend == "reference"


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(kernels, device):
    for dtype in DTYPES:
        for layout in ("rows", "dot", "m_strided"):
            a, m = operands((2, 5, 17, 9), layout, dtype, device)
            bias, acc = make((2, 9), dtype, device, 3), make((2, 5, 9), dtype, device, 4)
            for args in ((a, m, None, None), (a, m, bias, None), (a, m, None, acc)):
                torch.library.opcheck(kernels.small_bmm.default, args)


def test_meta(kernels):
    a, m = torch.empty((3, 4, 5), device="meta"), torch.empty((3, 5, 7), device="meta")
    out = ops.small_bmm(a, m)
    assert out.shape == (3, 4, 7) and out.device.type == "meta"


def _bad_cases():
    a, m = torch.zeros(2, 3, 4), torch.zeros(2, 4, 5)
    return [
        ((a.long(), m.long(), None, None), TypeError, r"`a` must have dtype float32"),
        ((a, m.double(), None, None), TypeError, r"`m` must have the same dtype"),
        ((a[0], m[0], None, None), ValueError, r"must be 3-D"),
        (
            (a, torch.zeros(2, 3, 5), None, None),
            ValueError,
            r"`m` must be \[B, K, N\] = \[2, 4, N\]",
        ),
        ((a, torch.zeros(1, 4, 5), None, None), ValueError, r"`m` must be \[B, K, N\]"),
        ((a, m, torch.zeros(2, 4), None), ValueError, r"`bias` must be \[B, N\] = \[2, 5\]"),
        (
            (a, m, None, torch.zeros(2, 3, 4)),
            ValueError,
            r"`acc` must be \[B, M, N\] = \[2, 3, 5\]",
        ),
        ((a, m, torch.zeros(2, 5), torch.zeros(2, 3, 5)), ValueError, r"`bias` or `acc`, not both"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_inputs_kernel_and_reference_alike(kernels, case):
    args, exc, pattern = _bad_cases()[case]
    with pytest.raises(exc, match=pattern):
        kernels.small_bmm(*args)
    with pytest.raises(exc, match=pattern):
        reference.small_bmm(*args)


@pytest.mark.parametrize("layout", ["rows", "dot", "a_transposed"])
@pytest.mark.parametrize("extra", ["none", "bias", "acc"])
def test_derivatives_to_second_order(kernels, layout, extra):
    """small_bmm's derivatives are small_bmm products again: float64 gradcheck and
    gradgradcheck through the kernels."""
    a, m = operands((2, 5, 7, 6), layout, torch.float64, "cpu")
    bias = make((2, 6), torch.float64, "cpu", 3) if extra == "bias" else None
    acc = make((2, 5, 6), torch.float64, "cpu", 4) if extra == "acc" else None
    inputs = [t.detach().clone().requires_grad_() for t in (a, m)]
    more = [t.detach().clone().requires_grad_() for t in (bias, acc) if t is not None]

    def fn(a, m, *rest):
        b = rest[0] if extra == "bias" else None
        c = rest[0] if extra == "acc" else None
        return ops.small_bmm(a, m, b, c)

    assert torch.autograd.gradcheck(fn, (*inputs, *more))
    assert torch.autograd.gradgradcheck(fn, (*inputs, *more))
    assert ops.last_backend("small_bmm").backend == "kernel"


def test_opcheck_with_gradients(kernels):
    a, m = operands((2, 5, 17, 9), "rows", torch.float64, "cpu")
    bias = make((2, 9), torch.float64, "cpu", 3)
    args = (a.requires_grad_(), m.requires_grad_(), bias.requires_grad_(), None)
    torch.library.opcheck(kernels.small_bmm.default, args)


def test_vmap_folds_into_the_batch(kernels):
    a = make((4, 2, 5, 7), torch.float64, "cpu", 1)
    m = make((2, 7, 6), torch.float64, "cpu", 2)
    bias = make((4, 2, 6), torch.float64, "cpu", 3)
    got = torch.vmap(ops.small_bmm, in_dims=(0, None, 0))(a, m, bias)
    want = torch.stack([torch.baddbmm(bias[i].unsqueeze(1), a[i], m) for i in range(4)])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(10, 4096, 384), (3, 4, 10, 84), (1, 7, 3)], ids=str)
def test_linear_is_functional_linear(kernels, dtype, shape):
    """Values and first and second derivatives of ``torch.nn.functional.linear``."""
    *lead, k, n = shape
    x = make((*lead, k), dtype, "cpu", 1).requires_grad_()
    w = make((n, k), dtype, "cpu", 2).requires_grad_()
    b = make((n,), dtype, "cpu", 3).requires_grad_()
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 2e-4}
    got, want = ops.linear(x, w, b), torch.nn.functional.linear(x, w, b)
    torch.testing.assert_close(got, want, **tol)
    assert ops.last_backend("small_bmm").backend == "kernel"
    v = make(want.shape, dtype, "cpu", 4)
    g1 = torch.autograd.grad(got, (x, w, b), v, create_graph=True)
    g0 = torch.autograd.grad(want, (x, w, b), v, create_graph=True)
    for a_, b_ in zip(g1, g0, strict=True):
        torch.testing.assert_close(a_, b_, **tol)
    probe = make(w.shape, dtype, "cpu", 6)  # a second derivative: d<dL/dw, probe>/dx
    h1 = torch.autograd.grad((g1[1] * probe).sum(), x, retain_graph=True)
    h0 = torch.autograd.grad((g0[1] * probe).sum(), x)
    torch.testing.assert_close(h1[0], h0[0], **tol)


def test_linear_without_bias_and_reference_backend(kernels):
    x, w = make((6, 5), torch.float64, "cpu", 1), make((4, 5), torch.float64, "cpu", 2)
    torch.testing.assert_close(ops.linear(x, w), x @ w.T, rtol=1e-12, atol=1e-12)
    ops.set_backend("reference")
    torch.testing.assert_close(ops.linear(x, w), x @ w.T, rtol=1e-12, atol=1e-12)


def test_linear_under_vmap_and_its_gradient(kernels):
    """The engine vmaps model forwards over nets: linear's vmap rule and gradient there."""
    x = make((3, 5), torch.float64, "cpu", 1)
    w = make((2, 4, 5), torch.float64, "cpu", 2).requires_grad_()
    b = make((2, 4), torch.float64, "cpu", 3).requires_grad_()
    got = torch.vmap(lambda w_, b_: ops.linear(x, w_, b_))(w, b)
    want = torch.stack([torch.nn.functional.linear(x, w[i], b[i]) for i in range(2)])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    v = make(want.shape, torch.float64, "cpu", 4)
    for a_, b_ in zip(
        torch.autograd.grad(got, (w, b), v), torch.autograd.grad(want, (w, b), v), strict=True
    ):
        torch.testing.assert_close(a_, b_, rtol=1e-12, atol=1e-12)
