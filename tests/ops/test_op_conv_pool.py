"""fastdistill::conv_pool_{forward,gather,backward}: kernels vs reference, ties, masks, autograd
to second order, opcheck, meta."""

from __future__ import annotations

import pytest
import torch
from fd_op_utils import DEVICES, DTYPES, make

from fastdistill import ops
from fastdistill.ops.reference import conv_pool as ref

# (N, B, G, Cin, H, W, Cout, KH, KW, ph, pw)
SHAPES = [
    (5, 1, 1, 1, 28, 28, 6, 5, 5, 2, 2),  # LeNet conv1
    (4, 3, 3, 6, 14, 14, 16, 5, 5, 0, 0),  # LeNet conv2, one input per net
    (3, 2, 1, 2, 9, 7, 5, 3, 2, 1, 0),  # odd sizes, shared input
    (2, 3, 1, 3, 8, 8, 7, 5, 5, 2, 2),
    (3, 2, 2, 1, 5, 6, 9, 1, 1, 0, 1),
    (1, 1, 1, 1, 2, 2, 1, 1, 1, 0, 0),
    (9, 2, 1, 13, 7, 9, 3, 3, 3, 1, 1),  # input-gradient blocks of 6+6+1 channels, 2 chunks
    (8, 1, 1, 11, 12, 12, 4, 3, 3, 0, 0),  # 6+4+1 channels, two-vector position blocks
    # channel-vector kernels (whole vectors of output channels, KW 3 or 5): window tiles of
    # 5 + 3, two channel vectors, shared input across nets
    (3, 2, 1, 3, 16, 16, 32, 3, 3, 1, 1),
    (4, 2, 1, 1, 12, 12, 6, 5, 5, 2, 2),  # one input channel, shared: flipped input gradient
]


@pytest.fixture(autouse=True, params=["wide", "narrow"])
def cpu_kernel_width(request, monkeypatch):
    """Every test on both CPU kernel sets: AVX-512 tiles (where the CPU has them) and the narrow
    ones AVX2 machines run (FASTDISTILL_CONV_TILES=0)."""
    monkeypatch.setenv("FASTDISTILL_CONV_TILES", "1" if request.param == "wide" else "0")
    return request.param


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


def problem(shape, dtype, device, seed=0):
    N, B, G, Cin, H, W, Cout, KH, KW, ph, pw = shape
    x = make((N, G * Cin, H, W), dtype, device, seed=seed)
    x[:, :, : H // 3] = 0  # constant rows: exact ties in the pooling windows
    w = make((B, Cout, Cin, KH, KW), dtype, device, seed=seed + 1)
    b = make((B, Cout), dtype, device, seed=seed + 2)
    return x, w, b, [ph, pw]


def tol(dtype) -> float:
    return 1e-12 if dtype == torch.float64 else 2e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernels_match_reference(kernels, device, dtype, relu, shape):
    x, w, b, pad = problem(shape, dtype, device)
    out, code = kernels.conv_pool_forward(x, w, b, pad, relu)
    out0, code0 = ref.conv_pool_forward(x, w, b, pad, relu)
    assert code.dtype == torch.uint8 and torch.equal(code.cpu(), code0.cpu())
    assert rel(out, out0) < tol(dtype)
    if relu:
        assert bool(((code == ref.INACTIVE) == (out0 <= 0)).all())
    xd = make(x.shape, dtype, device, seed=7)
    for bias in (b, None):
        got = kernels.conv_pool_gather(xd, w, bias, code, pad)
        assert rel(got, ref.conv_pool_gather(xd, w, bias, code, pad)) < tol(dtype)
    grad = make(out.shape, dtype, device, seed=8)
    for mask in ([True, True, True], [False, True, True], [True, False, False]):
        got = kernels.conv_pool_backward(grad, x, w, code, pad, mask)
        want = ref.conv_pool_backward(grad, x, w, code, pad, mask)
        for g, e, m in zip(got, want, mask):
            if m:
                assert g.shape == e.shape and rel(g, e) < tol(dtype)
            else:
                assert g.numel() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_public_wrappers_use_kernels(kernels, device):
    x, w, b, pad = problem(SHAPES[0], torch.float32, device)
    out, code = ops.conv_pool_forward(x, w, b, pad)
    assert ops.last_backend("conv_pool_forward").backend == "kernel"
    dx, dw, db = ops.conv_pool_backward(out, x, w, code, pad, (False, True, True))
    assert dx is None and dw.shape == w.shape and db.shape == b.shape


def test_reference_backend_matches(kernels):
    from fastdistill import ops

    x, w, b, pad = problem(SHAPES[1], torch.float64, "cpu")
    got = ops.conv_pool_forward(x, w, b, pad)
    ops.set_backend("reference")
    want = ops.conv_pool_forward(x, w, b, pad)
    assert ops.last_backend("conv_pool_forward").backend == "reference"
    assert torch.equal(got[1], want[1]) and rel(got[0], want[0]) < 1e-12


def test_shapes_and_errors(kernels):
    x, w, b, pad = problem(SHAPES[2], torch.float64, "cpu")
    with pytest.raises(ValueError, match="channels"):
        kernels.conv_pool_forward(x[:, :1], w, b, pad, True)
    with pytest.raises(ValueError, match="2x2"):
        kernels.conv_pool_forward(x[..., :1, :], w, b, pad, True)
    with pytest.raises(TypeError):
        kernels.conv_pool_forward(x.float(), w, b, pad, True)
    with pytest.raises(ValueError, match="code"):
        kernels.conv_pool_gather(x, w, b, torch.zeros(1, 1, 1, 1, dtype=torch.uint8), pad)


@pytest.mark.parametrize("shape", [SHAPES[2], SHAPES[4]], ids=str)
def test_autograd_to_second_order(kernels, shape):
    """First and second derivatives of all three ops by their registered formulas (gradcheck
    against finite differences, float64; no ties so the pooling is smooth)."""
    x, w, b, pad = problem(shape, torch.float64, "cpu")
    x = make(x.shape, torch.float64, "cpu", seed=11)
    _, code = kernels.conv_pool_forward(x, w, b, pad, True)
    g = make(code.shape, torch.float64, "cpu", seed=12)
    xs, ws, bs, gs = (t.clone().requires_grad_() for t in (x, w, b, g))

    def fwd(x, w, b):
        return kernels.conv_pool_forward(x, w, b, pad, True)[0]

    def gat(x, w, b):
        return kernels.conv_pool_gather(x, w, b, code, pad)

    def bwd(g, x, w):
        return kernels.conv_pool_backward(g, x, w, code, pad, [True, True, True])

    torch.autograd.gradcheck(fwd, (xs, ws, bs))
    torch.autograd.gradcheck(gat, (xs, ws, bs))
    torch.autograd.gradgradcheck(gat, (xs, ws, bs))
    torch.autograd.gradcheck(bwd, (gs, xs, ws))
    torch.autograd.gradgradcheck(bwd, (gs, xs, ws))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(kernels, device):
    for dtype in DTYPES:
        for shape in (SHAPES[2], SHAPES[1]):
            x, w, b, pad = problem(shape, dtype, device)
            out, code = kernels.conv_pool_forward(x, w, b, pad, True)
            torch.library.opcheck(kernels.conv_pool_forward.default, (x, w, b, pad, True))
            torch.library.opcheck(kernels.conv_pool_forward.default, (x, w, None, pad, False))
            torch.library.opcheck(kernels.conv_pool_gather.default, (x, w, b, code, pad))
            grad = make(out.shape, dtype, device, seed=3)
            for mask in ([True, True, True], [False, True, False]):
                torch.library.opcheck(
                    kernels.conv_pool_backward.default, (grad, x, w, code, pad, mask)
                )


def test_meta(kernels):
    x = torch.empty(7, 6, 10, 9, device="meta")
    w = torch.empty(3, 4, 2, 3, 3, device="meta")
    out, code = kernels.conv_pool_forward(x, w, None, [1, 0], True)
    assert out.shape == (7, 12, 5, 3) and code.dtype == torch.uint8
    dx, dw, db = kernels.conv_pool_backward(out, x, w, code, [1, 0], [True, False, True])
    assert dx.shape == x.shape and dw.shape == (0,) and db.shape == (3, 4)


@pytest.mark.parametrize("device", DEVICES)
def test_seq_step_opcheck(kernels, device):
    """fastdistill::seq_step (the one-call fused step): schema, fake kernel, device."""
    from fastdistill.engine import FlatModel, sample_weights
    from fastdistill.engine.fused import step as fs
    from fastdistill.models import LeNet

    model = FlatModel(LeNet(1, 4, 12).double().to(device))
    spec = fs.cached_plan(model).spec
    assert spec is not None
    gen = torch.Generator().manual_seed(0)
    w = sample_weights(model, 2, generator=gen, dtype=torch.float64).to(device)
    v = torch.randn(w.shape, generator=gen, dtype=torch.float64).to(device)
    x = torch.randn(3, 1, 12, 12, generator=gen, dtype=torch.float64).to(device)
    y = torch.randn(3, 4, generator=gen, dtype=torch.float64).to(device)
    t = torch.randint(0, 4, (3,), generator=gen).to(device)
    op = kernels.seq_step.default
    for args in (
        (w, v, x, y, spec, "soft", True, True),
        (w, None, x, y, spec, "softmax", False, False),
        (w, None, x, t, spec, "ce", False, False),
    ):
        torch.library.opcheck(op, args)
    value, g, hv, dx, dy = op(w, v, x, y, spec, "soft", True, True)
    assert value.shape == (2,) and g.shape == hv.shape == w.shape
    assert dx.shape == x.shape and dy.shape == y.shape


@pytest.mark.parametrize("bad", [4, 7, 128, 254])
@pytest.mark.parametrize("device", DEVICES)
def test_invalid_codes_are_rejected_not_read(kernels, device, bad):
    """A code outside 0-3/255 would index outside its 2x2 window: every path refuses it."""
    x = make((2, 1, 8, 8), torch.float64, device, seed=1)
    w = make((1, 3, 1, 3, 3), torch.float64, device, seed=2)
    _, code = kernels.conv_pool_forward(x, w, None, [1, 1], True)
    code = code.clone()
    code.view(-1)[5] = bad
    grad = torch.ones(code.shape, dtype=torch.float64, device=device)
    calls = {
        "kernel gather": lambda: kernels.conv_pool_gather(x, w, None, code, [1, 1]),
        "kernel backward": lambda: kernels.conv_pool_backward(
            grad, x, w, code, [1, 1], [True, True, False]
        ),
        "reference gather": lambda: ref.conv_pool_gather(x, w, None, code, [1, 1]),
        "reference backward": lambda: ref.conv_pool_backward(
            grad, x, w, code, [1, 1], [True, True, False]
        ),
    }
    for what, call in calls.items():
        with pytest.raises(ValueError, match=f"invalid value {bad} at flat index 5"):
            call()
        assert what


def test_invalid_code_is_found_past_the_first_block(kernels):
    """The code check scans blocks of 4096 without an early exit: a bad code far in is found."""
    x = make((40, 1, 16, 16), torch.float32, "cpu", seed=1)
    w = make((1, 8, 1, 3, 3), torch.float32, "cpu", seed=2)
    _, code = kernels.conv_pool_forward(x, w, None, [1, 1], True)
    code = code.clone()
    code.view(-1)[9000] = 17
    grad = torch.ones(code.shape)
    with pytest.raises(ValueError, match="invalid value 17 at flat index 9000"):
        kernels.conv_pool_backward(grad, x, w, code, [1, 1], [True, True, False])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("relu", [True, False])
def test_nan_and_inf_windows_pool_as_aten(kernels, dtype, relu):
    """NaN wins its window (a later NaN over an earlier one), infinities compare as numbers: the
    channel-vector kernels' per-lane fallback and the flattened kernels both follow ATen."""
    x = make((3, 6, 14, 14), dtype, "cpu", seed=3)
    x[0, 0, 4, 4] = float("nan")
    x[1, 2, 7:9, 7:9] = float("inf")
    x[2, 3, 1, 1] = -float("inf")
    x[2, 4, 9, 9] = float("nan")
    x[2, 4, 9, 10] = float("nan")
    w = make((1, 16, 6, 5, 5), dtype, "cpu", seed=4).abs()
    b = make((1, 16), dtype, "cpu", seed=5)
    out, code = kernels.conv_pool_forward(x, w, b, [0, 0], relu)
    out0, code0 = ref.conv_pool_forward(x, w, b, [0, 0], relu)
    assert (relu or bool(out0.isnan().any())) and torch.equal(code, code0)
    assert torch.equal(out.isnan(), out0.isnan())
    finite = ~out0.isnan()
    assert rel(out[finite].nan_to_num(), out0[finite].nan_to_num()) < tol(dtype)


ALL = [True, True, True, True]  # backward_tangent's output mask: every output


def tangent_problem(shape, dtype, device):
    x, w, _, pad = problem(shape, dtype, device)
    _, code = ref.conv_pool_forward(x, w, None, pad, True)
    grad = make(code.shape, dtype, device, seed=21)
    grad_t = make(code.shape, dtype, device, seed=22)
    x_t = make(x.shape, dtype, device, seed=23)
    w_t = make(w.shape, dtype, device, seed=24)
    return grad, grad_t, x, x_t, w, w_t, code, pad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_xt", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_tangent_matches_reference(kernels, device, dtype, with_xt, shape):
    grad, grad_t, x, x_t, w, w_t, code, pad = tangent_problem(shape, dtype, device)
    x_t = x_t if with_xt else None
    masks = (
        [True, True, True, True],
        [False, True, False, True],
        [True, False, True, True],
        [False, True, True, False],  # the fused step's replay: tangent outputs only
        [False, False, False, False],
    )
    for mask in masks:
        got = kernels.conv_pool_backward_tangent(grad, grad_t, x, x_t, w, w_t, code, pad, mask)
        want = ref.conv_pool_backward_tangent(grad, grad_t, x, x_t, w, w_t, code, pad, mask)
        primal_b = mask[2] and mask[3]
        wanted = [mask[0], mask[3], primal_b, mask[1], True, mask[2]]
        for g, e, m in zip(got, want, wanted, strict=True):
            if m:
                assert g.shape == e.shape and rel(g, e) < tol(dtype)
            else:
                assert g.numel() == 0


def test_backward_tangent_is_the_derivative_of_backward(kernels):
    """The tangent outputs are the directional derivative of conv_pool_backward along
    (grad_t, x_t, w_t), by forward-mode autograd through the reference (float64)."""
    grad, grad_t, x, x_t, w, w_t, code, pad = tangent_problem(SHAPES[3], torch.float64, "cpu")

    def bwd(g, xx, ww):
        return ref.conv_pool_backward(g, xx, ww, code, pad, [True, True, True])

    primal, tangent = torch.func.jvp(bwd, (grad, x, w), (grad_t, x_t, w_t))
    got = kernels.conv_pool_backward_tangent(
        grad, grad_t, x, x_t, w, w_t, code, pad, [True, True, True, True]
    )
    for g, e in zip(got, (*primal, *tangent), strict=True):
        assert rel(g, e) < 1e-12


def test_backward_tangent_wrapper_and_errors(kernels):
    grad, grad_t, x, x_t, w, w_t, code, pad = tangent_problem(SHAPES[1], torch.float32, "cpu")
    out = ops.conv_pool_backward_tangent(grad, grad_t, x, None, w, w_t, code, pad)
    assert ops.last_backend("conv_pool_backward_tangent").backend == "kernel"
    assert [t.shape for t in out] == [x.shape, w.shape, (3, 16), x.shape, w.shape, (3, 16)]
    tangent_only = ops.conv_pool_backward_tangent(
        grad, grad_t, x, None, w, w_t, code, pad, [False, True, True, False]
    )
    assert [t.numel() for t in tangent_only[:3]] == [0, 0, 0]
    for got, want in zip(tangent_only[3:], out[3:], strict=True):
        assert torch.equal(got, want)  # skipping the primal outputs changes no tangent bit
    with pytest.raises(ValueError, match="output_mask needs 4 entries"):
        ops.conv_pool_backward_tangent(grad, grad_t, x, None, w, w_t, code, pad, [True])
    op = kernels.conv_pool_backward_tangent
    with pytest.raises(ValueError, match="`grad_t` must have the same shape as `grad`"):
        op(grad, grad_t[:1], x, None, w, w_t, code, pad, ALL)
    with pytest.raises(ValueError, match="`w_t` must have the same shape as `w`"):
        op(grad, grad_t, x, None, w, w_t[:1], code, pad, ALL)
    with pytest.raises(ValueError, match="`x_t` must have the same shape as `x`"):
        op(grad, grad_t, x, x_t[:1], w, w_t, code, pad, ALL)
    with pytest.raises(TypeError, match="`x_t` must have the same dtype"):
        op(grad, grad_t, x, x_t.double(), w, w_t, code, pad, ALL)
    bad = code.clone()
    bad.view(-1)[3] = 9
    with pytest.raises(ValueError, match="invalid value 9 at flat index 3"):
        op(grad, grad_t, x, x_t, w, w_t, bad, pad, ALL)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_tangent_opcheck(kernels, device):
    for dtype in DTYPES:
        for shape in (SHAPES[2], SHAPES[1]):
            grad, grad_t, x, x_t, w, w_t, code, pad = tangent_problem(shape, dtype, device)
            masks = (
                (x_t, ALL),
                (None, [False, True, False, True]),
                (x_t, [False, True, True, False]),
            )
            for xt, mask in masks:
                torch.library.opcheck(
                    kernels.conv_pool_backward_tangent.default,
                    (grad, grad_t, x, xt, w, w_t, code, pad, mask),
                )


def test_backward_tangent_meta(kernels):
    x = torch.empty(7, 6, 10, 9, device="meta")
    w = torch.empty(3, 4, 2, 3, 3, device="meta")
    g = torch.empty(7, 12, 5, 3, device="meta")
    code = torch.empty(7, 12, 5, 3, device="meta", dtype=torch.uint8)
    mask = [False, True, True, True]
    out = kernels.conv_pool_backward_tangent(g, g, x, None, w, w, code, [1, 0], mask)
    assert [tuple(t.shape) for t in out] == [(0,), w.shape, (3, 4), x.shape, w.shape, (3, 4)]
