"""fastdistill::soft_label_loss (+ _backward, _double_backward): kernels vs reference vs a
float64 truth, stability, layouts, autograd to third order, opcheck, vmap, inner_loss routing,
backends, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fd_op_utils import DEVICES, DTYPES, assert_elementwise, make

from fastdistill import ops
from fastdistill.engine.losses import inner_loss
from fastdistill.ops import reference

REPO = Path(__file__).resolve().parents[2]
KINDS = ["soft", "softmax", "binary"]
# (N, K): K = 1 (soft), narrow rows (one CUDA warp each), rows at and across the warp/block
# switch (1024 columns), many rows, empty.
ROW_SHAPES = [(1, 1), (1, 7), (5, 10), (300, 3), (64, 33), (3, 1024), (2, 2049), (0, 10)]
BINARY_SHAPES = [(1, 1), (7, 1), (1000, 1), (0, 1)]
CASES = [(k, s) for k in ("soft", "softmax") for s in ROW_SHAPES] + [
    ("binary", s) for s in BINARY_SHAPES
]


def inputs(kind, shape, dtype, device="cpu", seed=0, scale=1.0):
    """logits, labels, upstream grad, tangents (u like logits, w like labels)."""
    n = shape[0]
    label_shape = (n,) if kind == "binary" else shape
    z = make(shape, dtype, device, seed, scale)
    y = make(label_shape, dtype, device, seed + 1)
    g = make((n,), dtype, device, seed + 2)
    u = make(shape, dtype, device, seed + 3)
    w = make(label_shape, dtype, device, seed + 4)
    return z, y, g, u, w


def truth(kind, z, y, g, u, w):
    """float64 values of the three ops (reference closed forms, themselves checked against
    autograd below) and a per-row error scale for each output."""
    z, y, g, u, w = (t.detach().double().cpu() for t in (z, y, g, u, w))
    loss = reference.soft_label_loss(z, y, kind)
    bwd = reference.soft_label_loss_backward(g, z, y, kind)
    dbl = reference.soft_label_loss_double_backward(g, z, y, u, w, kind)
    # rounding grows with the row's magnitudes: logits (through log-sum-exp), labels, tangents
    y2 = y if kind != "binary" else y[:, None]
    w2 = w if kind != "binary" else w[:, None]
    k = z.shape[1]
    row = (1 + z.abs().amax(1) + torch.log(torch.tensor(float(k)))) * (1 + y2.abs().sum(1))
    tangent = 1 + u.abs().sum(1) + w2.abs().sum(1)
    scale_rows = row * (1 + g.abs()) * tangent
    return loss, bwd, dbl, scale_rows


def check_rows(actual, expected, scale_rows, dtype, k=64.0):
    """Elementwise against the float64 truth, bound k * eps(dtype) * the row's scale."""
    scale = scale_rows.reshape((-1,) + (1,) * (expected.dim() - 1)).expand_as(expected)
    assert actual.is_contiguous()
    assert_elementwise(actual, expected, scale, dtype, k=k)


def run_all(fn_fwd, fn_bwd, fn_dbl, kind, z, y, g, u, w, dtype):
    loss, bwd, dbl, scale = truth(kind, z, y, g, u, w)
    check_rows(fn_fwd(z, y, kind), loss, scale, dtype)
    for a, e in zip(fn_bwd(g, z, y, kind), bwd):
        check_rows(a, e, scale, dtype)
    for a, e in zip(fn_dbl(g, z, y, u, w, kind), dbl):
        check_rows(a, e, scale, dtype)


# ------------------------------------------------------------------------- values vs truth
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind, shape", CASES, ids=str)
def test_kernel_and_reference_match_truth(kernels, device, dtype, kind, shape):
    z, y, g, u, w = inputs(kind, shape, dtype, device, seed=sum(shape))
    run_all(
        kernels.soft_label_loss,
        kernels.soft_label_loss_backward,
        kernels.soft_label_loss_double_backward,
        kind,
        z,
        y,
        g,
        u,
        w,
        dtype,
    )
    run_all(
        reference.soft_label_loss,
        reference.soft_label_loss_backward,
        reference.soft_label_loss_double_backward,
        kind,
        z,
        y,
        g,
        u,
        w,
        dtype,
    )
    out = kernels.soft_label_loss(z, y, kind)
    assert out.shape == (shape[0],) and out.dtype == dtype and out.device == z.device


@pytest.mark.parametrize("kind", KINDS)
def test_reference_closed_forms_match_autograd(kind):
    """The closed forms (shared by the kernels) are the derivatives of the loss."""
    shape = (6, 1) if kind == "binary" else (6, 5)
    z, y, g, u, w = inputs(kind, shape, torch.float64, seed=3)
    z, y, g = (t.requires_grad_() for t in (z, y, g))
    loss = reference.soft_label_loss(z, y, kind)
    first = torch.autograd.grad(loss, (z, y), g, create_graph=True)
    for a, e in zip(reference.soft_label_loss_backward(g, z, y, kind), first):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-13)
    second = torch.autograd.grad(first, (g, z, y), (u, w))
    closed = reference.soft_label_loss_double_backward(g, z, y, u, w, kind)
    for a, e in zip(closed, second):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_large_logits_are_stable(kernels, device, dtype, kind):
    """Shifted log-sum-exp: logits of size 1e4 (exp would overflow) and a mix of tiny and huge
    ones stay finite and accurate."""
    shape = (50, 1) if kind == "binary" else (50, 12)
    for scale in (1e2, 1e4):
        z, y, g, u, w = inputs(kind, shape, dtype, device, seed=11, scale=scale)
        z[::3] += scale  # rows far from zero on one side
        run_all(
            kernels.soft_label_loss,
            kernels.soft_label_loss_backward,
            kernels.soft_label_loss_double_backward,
            kind,
            z,
            y,
            g,
            u,
            w,
            dtype,
        )
        for out in (
            kernels.soft_label_loss(z, y, kind),
            *kernels.soft_label_loss_backward(g, z, y, kind),
        ):
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_inputs(kernels, device, dtype, kind):
    n, k = 40, 1 if kind == "binary" else 9
    z = make((k + 3, n), dtype, device, 1).t()[:, 1 : k + 1]  # transposed, offset
    if kind == "binary":
        z = make((2 * n, 1), dtype, device, 1)[1::2]  # strided, offset
        y = make((2 * n,), dtype, device, 2)[::2]  # strided
    else:
        y = make((n, 2 * k), dtype, device, 2)[:, ::2]  # strided
    g = make((1,), dtype, device, 3).expand(n)  # stride 0, as from mean()'s backward
    u = make((n, k), dtype, device, 4).t().contiguous().t()
    w = make(tuple(y.shape), dtype, device, 5).flip(0)
    assert not (z.is_contiguous() or y.is_contiguous() or g.is_contiguous())
    run_all(
        kernels.soft_label_loss,
        kernels.soft_label_loss_backward,
        kernels.soft_label_loss_double_backward,
        kind,
        z,
        y,
        g,
        u,
        w,
        dtype,
    )
    torch.testing.assert_close(
        ops.soft_label_loss(z, y, kind), reference.soft_label_loss(z, y, kind)
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_empty(kernels, device, kind):
    k = 1 if kind == "binary" else 4
    z, y, g, u, w = inputs(kind, (0, k), torch.float32, device)
    for mod in (kernels, reference):
        assert mod.soft_label_loss(z, y, kind).shape == (0,)
        gz, gy = mod.soft_label_loss_backward(g, z, y, kind)
        assert gz.shape == z.shape and gy.shape == y.shape
        dg, dz, dy = mod.soft_label_loss_double_backward(g, z, y, u, w, kind)
        assert dg.shape == (0,) and dz.shape == z.shape and dy.shape == y.shape
    assert ops.soft_label_loss(z, y, kind).shape == (0,)


def test_deterministic_across_threads(kernels):
    z, y, g, u, w = inputs("softmax", (3000, 10), torch.float32, seed=5)
    first = kernels.soft_label_loss_double_backward(g, z, y, u, w, "softmax")
    threads = torch.get_num_threads()
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            again = kernels.soft_label_loss_double_backward(g, z, y, u, w, "softmax")
            assert all(torch.equal(a, b) for a, b in zip(first, again))
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------- wrapper, dtypes, backends
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_public_wrapper_uses_kernel(kernels, device, kind):
    shape = (30, 1) if kind == "binary" else (30, 10)
    z, y, *_ = inputs(kind, shape, torch.float64, device, seed=2)
    out = ops.soft_label_loss(z, y, kind)
    choice = ops.last_backend("soft_label_loss")
    assert choice.backend == "kernel" and choice.device == torch.device(device).type
    torch.testing.assert_close(out, reference.soft_label_loss(z, y, kind))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_types_computed_in_float32(kernels, dtype):
    z, y, *_ = inputs("soft", (20, 10), dtype, seed=4)
    z.requires_grad_()
    out = ops.soft_label_loss(z, y, "soft")
    assert out.dtype == dtype
    expected = reference.soft_label_loss(z.detach().float(), y.float(), "soft").to(dtype)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert z.grad is not None and z.grad.dtype == dtype


def test_forced_reference_backend(kernels):
    z, y, *_ = inputs("softmax", (30, 10), torch.float64, seed=2)
    ops.set_backend("reference")
    ref = ops.soft_label_loss(z, y, "softmax")
    choice = ops.last_backend("soft_label_loss")
    assert choice.backend == "reference" and "forced" in choice.reason
    ops.set_backend("auto")
    torch.testing.assert_close(ops.soft_label_loss(z, y, "softmax"), ref)
    assert ops.last_backend("soft_label_loss").backend == "kernel"


SUBPROCESS_CODE = """
    import json, torch
    import fastdistill.ops as ops
    from fastdistill.engine.losses import inner_loss
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    loss = inner_loss(logits, labels, "soft")
    expected = -(labels * torch.log_softmax(logits, -1)).sum(-1).mean(-1)
    assert torch.allclose(loss, expected)
    (g,) = torch.autograd.grad(loss.sum(), logits, create_graph=True)
    (hy,) = torch.autograd.grad(g, labels, torch.ones_like(g))
    assert torch.isfinite(hy).all()
    info = ops.backend_info()
    print(json.dumps({"choice": ops.last_backend("soft_label_loss")._asdict(),
                      "loaded": info["extension_loaded"]}))
"""


def _run(code: str, **env: str) -> dict:
    import json

    full_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FASTDISTILL_BACKEND", "FASTDISTILL_DISABLE_EXTENSION")
    }
    full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_env_reference_backend():
    out = _run(SUBPROCESS_CODE, FASTDISTILL_BACKEND="reference")
    assert out["choice"]["backend"] == "reference"
    assert "FASTDISTILL_BACKEND=reference" in out["choice"]["reason"]


def test_without_extension():
    out = _run(SUBPROCESS_CODE, FASTDISTILL_DISABLE_EXTENSION="1")
    assert out["loaded"] is False
    assert out["choice"]["backend"] == "reference"


# ------------------------------------------------------------------------------- autograd
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["kernel", "reference"])
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_and_gradgradcheck_float64(kernels, device, backend, kind):
    if backend == "reference":
        ops.set_backend("reference")
    shape = (5, 1) if kind == "binary" else (4, 6)
    z, y, *_ = inputs(kind, shape, torch.float64, device, seed=7)
    z.requires_grad_()
    y.requires_grad_()

    def fn(a, b):
        return ops.soft_label_loss(a, b, kind)

    assert torch.autograd.gradcheck(fn, (z, y))
    assert torch.autograd.gradgradcheck(fn, (z, y))
    assert ops.last_backend("soft_label_loss").backend == backend
    # logits only (labels frozen, as with hard labels)
    assert torch.autograd.gradgradcheck(lambda a: ops.soft_label_loss(a, y.detach(), kind), (z,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_backward_ops_gradcheck_third_order(kernels, device, kind):
    """The backward op's derivative is the double-backward kernel; that one's derivative
    (third order) goes through the reference closed forms."""
    shape = (4, 1) if kind == "binary" else (3, 5)
    z, y, g, u, w = (t.requires_grad_() for t in inputs(kind, shape, torch.float64, device, 9))

    def bwd(g_, z_, y_):
        return kernels.soft_label_loss_backward(g_, z_, y_, kind)

    def dbl(g_, z_, y_, u_, w_):
        return kernels.soft_label_loss_double_backward(g_, z_, y_, u_, w_, kind)

    assert torch.autograd.gradcheck(bwd, (g, z, y))
    assert torch.autograd.gradgradcheck(bwd, (g, z, y))
    assert torch.autograd.gradcheck(dbl, (g, z, y, u, w))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_second_derivatives_match_reference(kernels, device, kind):
    """What the adjoint engine computes: g = d loss/dw (create_graph), then the vector-Jacobian
    product of g w.r.t. (w, x, labels), through a linear model z = x @ w."""

    def hvp(backend):
        ops.set_backend(backend)
        k = 1 if kind == "binary" else 7
        w = make((3, 5, k), torch.float64, device, 1).requires_grad_()
        x = make((8, 5), torch.float64, device, 2).requires_grad_()
        y_shape = (8,) if kind == "binary" else (8, k)
        y = make(y_shape, torch.float64, device, 3).requires_grad_()
        logits = torch.einsum("nd,bdk->bnk", x, w)
        loss = inner_loss(logits, y, kind)
        (g,) = torch.autograd.grad(loss.sum(), w, create_graph=True)
        v = make(g.shape, torch.float64, device, 4)
        out = (loss, g, *torch.autograd.grad(g, (w, x, y), v))
        used = ops.last_backend("soft_label_loss").backend
        return out, used

    kern, used_k = hvp("auto")
    ref, used_r = hvp("reference")
    assert (used_k, used_r) == ("kernel", "reference")
    for a, b in zip(kern, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(kernels, device, requires_grad):
    for dtype in DTYPES:
        for kind in KINDS:
            shape = (5, 1) if kind == "binary" else (4, 6)
            z, y, g, u, w = (
                t.requires_grad_(requires_grad) for t in inputs(kind, shape, dtype, device, 1)
            )
            torch.library.opcheck(kernels.soft_label_loss.default, (z, y, kind))
            torch.library.opcheck(kernels.soft_label_loss_backward.default, (g, z, y, kind))
            torch.library.opcheck(
                kernels.soft_label_loss_double_backward.default, (g, z, y, u, w, kind)
            )
    zt = make((6, 4), torch.float64, device, 1).t()  # non-contiguous
    torch.library.opcheck(kernels.soft_label_loss.default, (zt, zt.detach() * 0.5, "soft"))


def test_meta(kernels):
    z, y = torch.empty(7, 5, device="meta"), torch.empty(7, 5, device="meta")
    assert ops.soft_label_loss(z, y, "softmax").shape == (7,)
    gz, gy = kernels.soft_label_loss_backward(torch.empty(7, device="meta"), z, y, "soft")
    assert gz.shape == (7, 5) and gy.shape == (7, 5) and gz.device.type == "meta"
    zb = torch.empty(7, 1, device="meta")
    assert ops.soft_label_loss(zb, torch.empty(7, device="meta"), "binary").shape == (7,)


# ----------------------------------------------------------------------------------- vmap
@pytest.mark.parametrize("kind", KINDS)
def test_vmap(kernels, kind):
    k = 1 if kind == "binary" else 6
    z = make((4, 9, k), torch.float64, seed=1)
    y = make((4, 9) if kind == "binary" else (4, 9, k), torch.float64, seed=2)
    g = make((4, 9), torch.float64, seed=3)
    loop = torch.stack([reference.soft_label_loss(z[i], y[i], kind) for i in range(4)])
    torch.testing.assert_close(torch.vmap(ops.soft_label_loss, (0, 0, None))(z, y, kind), loop)
    shared = torch.stack([reference.soft_label_loss(z[i], y[0], kind) for i in range(4)])
    torch.testing.assert_close(
        torch.vmap(ops.soft_label_loss, (0, None, None))(z, y[0], kind), shared
    )
    assert ops.last_backend("soft_label_loss").backend == "kernel"
    bwd = torch.vmap(kernels.soft_label_loss_backward, (0, 0, 0, None))(g, z, y, kind)
    for i in range(4):
        for a, b in zip(bwd, reference.soft_label_loss_backward(g[i], z[i], y[i], kind)):
            torch.testing.assert_close(a[i], b)
    # inner_loss itself under vmap (per-net logits [N, K] inside, labels shared)
    per_net = torch.vmap(lambda t: inner_loss(t, y[0], kind))(z)
    torch.testing.assert_close(per_net, shared.mean(-1))


def test_func_grad_transforms_fall_back_to_reference(kernels):
    """torch.func.grad/jacrev do not compose with register_autograd formulas of C++ ops: the
    wrapper runs the reference there (vmap alone keeps the kernel)."""
    z = make((4, 9, 6), torch.float64, seed=1)
    y = make((9, 6), torch.float64, seed=2)

    def total(a):
        return ops.soft_label_loss(a, y, "softmax").sum()

    grads = torch.vmap(torch.func.grad(total))(z)
    choice = ops.last_backend("soft_label_loss")
    assert choice.backend == "reference" and "torch.func" in choice.reason
    expected = torch.stack(
        [
            reference.soft_label_loss_backward(
                torch.ones(9, dtype=torch.float64), zi, y, "softmax"
            )[0]
            for zi in z
        ]
    )
    torch.testing.assert_close(grads, expected)
    ops.set_backend("kernels")
    with pytest.raises(RuntimeError, match="FASTDISTILL_BACKEND=kernels but torch.func"):
        torch.func.grad(total)(z[0])


# -------------------------------------------------------------------------- inner_loss
def _old_inner_loss(logits, labels, kind):
    """inner_loss before it used the op (the formula of docs/algorithm.md §2)."""
    if kind == "binary":
        z = logits.squeeze(-1)
        y = labels.to(z.dtype).expand_as(z)
        return F.binary_cross_entropy_with_logits(z, y, reduction="none").mean(-1)
    target = torch.softmax(labels, dim=-1) if kind == "softmax" else labels
    return -(target * torch.log_softmax(logits, dim=-1)).sum(-1).mean(-1)


@pytest.mark.parametrize("kind", KINDS)
def test_inner_loss_routes_through_op(kernels, kind):
    k = 1 if kind == "binary" else 10
    logits = make((3, 12, k), torch.float64, seed=1)
    labels = make((12,) if kind == "binary" else (12, k), torch.float64, seed=2)
    out = inner_loss(logits, labels, kind)
    assert ops.last_backend("soft_label_loss").backend == "kernel"
    assert out.shape == (3,)
    torch.testing.assert_close(out, _old_inner_loss(logits, labels, kind), rtol=1e-13, atol=0)


# ------------------------------------------------------------------------------ bad inputs
def _bad_cases(device):
    f32 = {"dtype": torch.float32, "device": device}
    z, y = torch.zeros(4, 3, **f32), torch.zeros(4, 3, **f32)
    zb, yb = torch.zeros(4, 1, **f32), torch.zeros(4, **f32)
    return [
        ((z.half(), y.half(), "soft"), TypeError, r"`logits` must have dtype float32 or float64"),
        ((z.int(), y.int(), "soft"), TypeError, r"`logits` must have dtype float32 or float64"),
        ((z, y.double(), "soft"), TypeError, r"`labels` must have the same dtype"),
        ((z[0], y[0], "soft"), ValueError, r"`logits` must be a 2-D tensor \[N, K\]"),
        ((z[:, :0], y[:, :0], "soft"), ValueError, r"at least one column"),
        ((z, y[:, :2], "softmax"), ValueError, r"`labels` must have the same shape as `logits`"),
        ((z, y, "hard"), ValueError, r"`kind` must be 'soft', 'softmax' or 'binary'"),
        ((z, y[:, 0], "binary"), ValueError, r"`logits` must have shape \[N, 1\]"),
        ((zb, yb[:3], "binary"), ValueError, r"`labels` must have shape \[N\] = \[4\]"),
        ((zb, zb, "binary"), ValueError, r"`labels` must have shape \[N\] = \[4\]"),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_kernel_and_reference_alike(kernels, device):
    for args, exc, pattern in _bad_cases(device):
        with pytest.raises(exc, match=pattern):
            kernels.soft_label_loss(*args)
        with pytest.raises(exc, match=pattern):
            reference.soft_label_loss(*args)
        if args[0].dtype != torch.float16:  # the wrapper computes float16 in float32
            with pytest.raises(exc, match=pattern):
                ops.soft_label_loss(*args)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_backward_inputs(kernels, device):
    z, y, g, u, w = inputs("soft", (4, 3), torch.float32, device)
    cases = [
        (
            "soft_label_loss_backward",
            (g[:3], z, y, "soft"),
            ValueError,
            r"`grad` must have shape \[N\] = \[4\]",
        ),
        (
            "soft_label_loss_backward",
            (g.double(), z, y, "soft"),
            TypeError,
            r"`grad` must have the same dtype",
        ),
        (
            "soft_label_loss_double_backward",
            (g, z, y, u[:, :2], w, "soft"),
            ValueError,
            r"`gg_logits` must have the same shape as `logits`",
        ),
        (
            "soft_label_loss_double_backward",
            (g, z, y, u, w[:2], "soft"),
            ValueError,
            r"`gg_labels` must have the same shape as `labels`",
        ),
    ]
    for name, args, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            getattr(kernels, name)(*args)
        with pytest.raises(exc, match=pattern):
            getattr(reference, name)(*args)


@pytest.mark.cuda
def test_device_mismatch_cuda(kernels):
    z = torch.zeros(2, 3, device="cuda")
    with pytest.raises(ValueError, match=r"`labels` must be on the same device"):
        kernels.soft_label_loss(z, z.cpu(), "soft")
    with pytest.raises(ValueError, match=r"`labels` must be on the same device"):
        ops.soft_label_loss(z, z.cpu(), "soft")
    with pytest.raises(ValueError, match=r"`grad` must be on the same device"):
        kernels.soft_label_loss_backward(torch.zeros(2), z, z, "soft")
