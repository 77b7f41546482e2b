"""fastdistill::small_bmm: the small-product kernels vs a float64 truth over shapes (every tail
of the register blocks), operand layouts (each kernel and the library fallback), bias and
accumulate; thread-count independence, opcheck, bad inputs."""

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
    (1, 1100, 40, 120),
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
