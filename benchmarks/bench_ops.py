"""Kernels vs pure-PyTorch reference for the fused update ops, on a LeNet-sized flat buffer
(P = 61706 parameters) of B = 1 or 32 nets. Each (op, device, B) is one benchmark group, so the
implementations appear side by side:

* ``kernel``: ``torch.ops.fastdistill.<op>`` (one fused pass),
* ``reference``: ``fastdistill.ops.reference.<op>`` (what the ops fall back to),
* ``eager``: what a user would write by hand (inner_update: ``torch.add(w, g, alpha=-lr)`` with a
  Python float lr, which costs a device sync on GPU; adjoint_update: two separate expressions).

The inner-loss op ``soft_label_loss`` is compared kernel vs reference (forward, and the
gradient + double backward of an adjoint step) at the end of this file.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastdistill import ops
from fastdistill.ops import reference

P_LENET = 61706
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _sync(device: str):
    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _kernels():
    if not ops.extension_loaded():
        pytest.skip(f"extension not loaded: {ops.backend_info()['reason']}")
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


# ------------------------------------------------------------------------- soft_label_loss
# Rows of the inner loss: B = 32 nets x N = 100 distilled examples, K = 10 or 100 classes.
# "forward": the per-example losses; "hvp": what one adjoint step does with the loss: the logit
# gradient with create_graph, then its vector-Jacobian product w.r.t. logits and labels.
SLL_ROWS = 3200


def _sll_inputs(K: int, device: str, requires_grad: bool):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(SLL_ROWS, K, generator=gen).to(device).requires_grad_(requires_grad)
    y = torch.randn(SLL_ROWS, K, generator=gen).to(device).requires_grad_(requires_grad)
    u = torch.randn(SLL_ROWS, K, generator=gen).to(device)
    return z, y, u


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("K", [10, 100])
@pytest.mark.parametrize("kind", ["soft", "softmax"])
@pytest.mark.parametrize("what", ["forward", "hvp"])
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_soft_label_loss(benchmark, impl, what, kind, K, device):
    benchmark.group = f"soft_label_loss {what} {kind} {device} rows={SLL_ROWS} K={K}"
    z, y, u = _sll_inputs(K, device, requires_grad=what == "hvp")
    op = _kernels().soft_label_loss.default if impl == "kernel" else reference.soft_label_loss
    if what == "forward":
        fn = lambda: op(z, y, kind)
    else:

        def fn():
            (gz,) = torch.autograd.grad(op(z, y, kind).sum(), z, create_graph=True)
            return torch.autograd.grad(gz, (z, y), u)

    _run(benchmark, fn, device)


# AlexCifarNet's pools and norms: a 128-image real-batch chunk and the 10 distilled images.
POOL_SHAPES = [(128, 64, 32, 32), (10, 64, 32, 32)]


@pytest.mark.parametrize("shape", POOL_SHAPES, ids=str)
@pytest.mark.parametrize("impl", ["kernel", "aten"])
def test_max_pool2d_3x3_stride2(benchmark, impl, shape):
    benchmark.group = f"max_pool2d fwd+bwd {shape}"
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).relu()
    x.requires_grad_()
    pool = ops.max_pool2d if impl == "kernel" else F.max_pool2d
    if impl == "kernel":
        _kernels()
    g = torch.randn(pool(x, 3, 2, 1).shape)

    def fn():
        torch.autograd.grad(pool(x, 3, 2, 1), x, g)

    _run(benchmark, fn, "cpu")


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_local_response_norm_second_derivatives(benchmark, impl):
    benchmark.group = "local_response_norm_backward_backward [10, 64, 16, 16]"
    gen = torch.Generator().manual_seed(0)
    g, x, u = (torch.randn(10, 64, 16, 16, generator=gen) for _ in range(3))
    args = (4, 0.001 / 9.0, 0.75, 1.0)
    if impl == "kernel":
        op = _kernels().local_response_norm_backward_backward
        fn = lambda: op(g, x, u, *args)
    else:
        fn = lambda: reference.local_response_norm_backward_backward(g, x, u, *args)
    _run(benchmark, fn, "cpu")


# LeNet's conv + ReLU + 2x2 pool layers: the 1024-image real batch and the 10 distilled images.
# `wide` is what an AVX-512 CPU runs (channel-vector tiles, flipped one-channel input gradient),
# `narrow` the AVX2 kernels (FASTDISTILL_CONV_TILES=0), `reference` the ATen composite.
CONV_POOL_LAYERS = {"conv1": (1, 28, 6, 2), "conv2": (6, 14, 16, 0)}  # Cin, H=W, Cout, padding


def _conv_pool_call(what: str, layer: str, N: int):
    Cin, H, Cout, pad = CONV_POOL_LAYERS[layer]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, Cin, H, H, generator=gen)
    w = 0.1 * torch.randn(1, Cout, Cin, 5, 5, generator=gen)
    b = torch.randn(1, Cout, generator=gen)
    _, code = reference.conv_pool.conv_pool_forward(x, w, b, [pad, pad], True)
    g, g_t = (torch.randn(code.shape, generator=gen) for _ in range(2))
    w_t = torch.randn(w.shape, generator=gen)
    return {
        "forward": lambda m: m.conv_pool_forward(x, w, b, [pad, pad], True),
        "weight_grad": lambda m: m.conv_pool_backward(
            g, x, w, code, [pad, pad], [False, True, True]
        ),
        "input_grad": lambda m: m.conv_pool_backward(
            g, x, w, code, [pad, pad], [True, False, False]
        ),
        "tangent": lambda m: m.conv_pool_backward_tangent(
            g, g_t, x, None, w, w_t, code, [pad, pad], [True, True, True, True]
        ),
    }[what]


@pytest.mark.parametrize("N", [1024, 10])
@pytest.mark.parametrize("layer", list(CONV_POOL_LAYERS))
@pytest.mark.parametrize("what", ["forward", "weight_grad", "input_grad", "tangent"])
@pytest.mark.parametrize("impl", ["wide", "narrow", "reference"])
def test_lenet_conv_pool(benchmark, monkeypatch, impl, what, layer, N):
    benchmark.group = f"conv_pool {what} LeNet {layer} N={N}"
    call = _conv_pool_call(what, layer, N)
    if impl == "reference":
        fn = lambda: call(reference.conv_pool)
    else:
        monkeypatch.setenv("FASTDISTILL_CONV_TILES", "1" if impl == "wide" else "0")
        kernels = _kernels()
        fn = lambda: call(kernels)
    _run(benchmark, fn, "cpu")
