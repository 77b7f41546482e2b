"""Fused inner-step gradients/HVPs (fastdistill.engine.fused) against autograd, float64."""

from __future__ import annotations

import logging

import pytest
import torch
from engine_problems import DropoutMLP, make_problem
from torch import nn

from fastdistill.engine import FlatModel, hypergradient, sample_weights
from fastdistill.engine.fused import step as fs
from fastdistill.models import MLP, AlexCifarNet, ConvNet, LeNet

TOL = 1e-10
pytestmark = pytest.mark.usefixtures("fused_on")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def tiny1d() -> nn.Module:
    """Conv1d, tanh, 1-d pools, instance norm, no-bias layers, a nested Sequential."""
    return nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1),
        nn.Tanh(),
        nn.MaxPool1d(2),
        nn.Conv1d(4, 6, 3, stride=1, dilation=2, bias=False),
        nn.InstanceNorm1d(6, affine=True),
        nn.ReLU(),
        nn.AvgPool1d(2),
        nn.Flatten(),
        nn.Linear(6 * 2, 5, bias=False),
        nn.Tanh(),
        nn.Sequential(nn.Identity(), nn.Linear(5, 3)),
    )


def pool_first() -> nn.Module:
    return nn.Sequential(
        nn.AvgPool2d(2),
        nn.GroupNorm(1, 1, affine=False),
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, stride=1),
        nn.GroupNorm(3, 3),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 4),
    )


# name -> (constructor, input shape without N)
MODELS = {
    "lenet28": (lambda: LeNet(1, 4, 28), (1, 28, 28)),
    "lenet8": (lambda: LeNet(1, 5, 8), (1, 8, 8)),
    "lenet32": (lambda: LeNet(3, 3, 32), (3, 32, 32)),
    "convnet": (lambda: ConvNet(3, 4, 8, width=6, depth=2), (3, 8, 8)),
    "mlp": (lambda: MLP(1, 4, 6, hidden=(12, 10)), (1, 6, 6)),
    "tiny1d": (tiny1d, (2, 16)),
    "poolfirst": (pool_first, (1, 8, 8)),
}


def problem(name: str, nets: int, kind: str, seed: int = 0):
    torch.manual_seed(seed)
    ctor, shape = MODELS[name]
    module = ctor().double()
    if kind == "binary":  # one logit: replace the head's output width
        module = nn.Sequential(*_children(module), nn.Linear(_width(module, shape), 1)).double()
    model = FlatModel(module)
    gen = torch.Generator().manual_seed(seed)
    w = sample_weights(model, nets, generator=gen, dtype=torch.float64)
    w = w + 0.05 * torch.randn(w.shape, generator=gen, dtype=torch.float64)  # nonzero biases
    x = torch.randn(5, *shape, generator=gen, dtype=torch.float64)
    k = module(x[:1]).shape[-1]
    if kind == "binary":
        y = torch.randn(5, generator=gen, dtype=torch.float64)
    else:
        y = torch.randn(5, k, generator=gen, dtype=torch.float64) * 0.5 + 0.3
    v = torch.randn(nets, model.num_params, generator=gen, dtype=torch.float64)
    return model, w, x, y, v


def _children(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, (LeNet,)):
        return [
            module.conv1, module.pool, nn.ReLU(), module.conv2, module.pool, nn.ReLU(),
            nn.Flatten(), module.fc1, nn.ReLU(), module.fc2, nn.ReLU(), module.fc3,
        ]  # fmt: skip
    if isinstance(module, ConvNet):
        return [*module.features, nn.Flatten(), module.classifier]
    if isinstance(module, MLP):
        return list(module.net)
    return list(module.net) if hasattr(module, "net") else list(module)


def _width(module: nn.Module, shape) -> int:
    with torch.no_grad():
        return module(torch.zeros(1, *shape, dtype=torch.float64)).shape[-1]


@pytest.mark.parametrize("learn_labels", [True, False])
@pytest.mark.parametrize("kind", ["soft", "softmax", "binary"])
@pytest.mark.parametrize("nets", [1, 3])
@pytest.mark.parametrize("name", list(MODELS))
def test_hvp_matches_autograd(name, nets, kind, learn_labels, impl):
    model, w, x, y, v = problem(name, nets, kind)
    assert fs.uses_fused(model), fs.describe(model)
    g, hv, dx, dy = fs.inner_hvp(model, w, x, y, kind, v, learn_labels)
    assert fs.uses_fused(model, x), fs.describe(model)
    g0, hv0, dx0, dy0 = fs.autograd_inner_hvp(model, w, x, y, kind, v, learn_labels)
    assert rel(g, g0) < TOL
    assert rel(hv, hv0) < TOL
    assert dx.shape == x.shape and rel(dx, dx0) < TOL
    if learn_labels:
        assert dy.shape == y.shape and rel(dy, dy0) < TOL
    else:
        assert dy is None and dy0 is None
    assert rel(fs.inner_grad(model, w, x, y, kind), g0) < TOL


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("nets", [1, 3])
@pytest.mark.parametrize("name", list(MODELS))
def test_outer_value_and_grad_matches_autograd(name, nets, binary, impl):
    model, w, x, _, _ = problem(name, nets, "binary" if binary else "soft")
    x = torch.cat([x, x.flip(0)])
    k = 1 if binary else _width(model.module, x.shape[1:])
    y = torch.randint(0, 2 if binary else k, (x.shape[0],))
    loss, g = fs.outer_value_and_grad(model, w, x, y, binary)
    loss0, g0 = fs.autograd_outer_value_and_grad(model, w, x, y, binary)
    assert rel(loss, loss0) < TOL and rel(g, g0) < TOL


def test_maxpool_ties_follow_autograd(impl):
    """Constant image regions make max-pool ties (MNIST background): same argmax as autograd."""
    model, w, x, y, v = problem("lenet28", 2, "soft")
    x = x.clone()
    x[:, :, :12] = 0.0
    got = fs.inner_hvp(model, w, x, y, "soft", v, True)
    want = fs.autograd_inner_hvp(model, w, x, y, "soft", v, True)
    for a, b in zip(got, want):
        assert rel(a, b) < TOL


@pytest.mark.parametrize("learn_labels", [True, False])
@pytest.mark.parametrize("nets", [1, 3])
@pytest.mark.parametrize("name", ["lenet", "convnet", "mlp"])
def test_adjoint_with_fused_steps_equals_unroll(name, nets, learn_labels, impl):
    model, w0, data, labels, raw, rx, ry = make_problem(name, nets=nets, steps=2, epochs=3)
    assert fs.uses_fused(model)
    a = hypergradient(
        model, w0, data, labels, raw, rx, ry, engine="adjoint", learn_labels=learn_labels
    )
    u = hypergradient(
        model, w0, data, labels, raw, rx, ry, engine="unroll", learn_labels=learn_labels
    )
    assert rel(a.outer_loss, u.outer_loss) < 1e-12
    assert rel(a.final_weights, u.final_weights) < 1e-12
    assert rel(a.grad_data, u.grad_data) < TOL
    assert rel(a.grad_raw_lrs, u.grad_raw_lrs) < TOL
    if learn_labels:
        assert rel(a.grad_labels, u.grad_labels) < TOL


def test_switch_off_gives_the_same_numbers(monkeypatch):
    model, w0, data, labels, raw, rx, ry = make_problem("lenet", nets=2, steps=2, epochs=2)
    on = hypergradient(model, w0, data, labels, raw, rx, ry, engine="adjoint")
    fs.set_fused(None)
    monkeypatch.setenv("FASTDISTILL_FUSED", "0")
    assert not fs.fused_enabled() and "switched off" in fs.describe(model)
    off = hypergradient(model, w0, data, labels, raw, rx, ry, engine="adjoint")
    monkeypatch.setenv("FASTDISTILL_FUSED", "1")
    monkeypatch.setenv("FASTDISTILL_BACKEND", "reference")
    assert not fs.fused_enabled()
    assert rel(on.grad_data, off.grad_data) < TOL
    assert rel(on.grad_labels, off.grad_labels) < TOL


@pytest.mark.parametrize(
    "module",
    [
        lambda: AlexCifarNet(3, 4, 16),
        lambda: DropoutMLP(1, 3, 4),
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.GELU(), nn.Linear(8, 3)),
    ],
    ids=["alexcifarnet", "dropout", "gelu"],
)
def test_unsupported_models_fall_back_and_say_so(module, caplog):
    model = FlatModel(module().double())
    with caplog.at_level(logging.INFO, logger="fastdistill.engine.fused"):
        assert not fs.uses_fused(model)
    text = fs.describe(model)
    assert text.startswith("autograd fallback:"), text
    assert "autograd fallback" in caplog.text
    c, size = (3, 16) if isinstance(model.module, AlexCifarNet) else (1, 4)
    x = torch.randn(3, c, size, size, dtype=torch.float64)
    k = model.forward(sample_weights(model, 1, dtype=torch.float64), x, train=False).shape[-1]
    w = sample_weights(model, 2, dtype=torch.float64)
    y = torch.randn(3, k, dtype=torch.float64)
    v = torch.randn_like(w)
    torch.manual_seed(0)
    got = fs.inner_hvp(model, w, x, y, "soft", v, True)
    torch.manual_seed(0)
    want = fs.autograd_inner_hvp(model, w, x, y, "soft", v, True)
    for a, b in zip(got, want):
        assert rel(a, b) < TOL


def test_unsupported_input_shape_falls_back():
    """A plan that cannot run on some input (Linear over a 3-d input) falls back for it."""
    model = FlatModel(nn.Sequential(nn.Linear(4, 3)).double())
    assert fs.uses_fused(model)
    w = sample_weights(model, 2, dtype=torch.float64)
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    y = torch.randn(5, 2, 3, dtype=torch.float64)
    got = fs.inner_grad(model, w, x, y, "soft")
    assert not fs.uses_fused(model, x)
    assert fs.uses_fused(model, x[:, 0])
    assert rel(got, fs.autograd_inner_grad(model, w, x, y, "soft")) < TOL


def test_cpp_and_python_steps_agree():
    """The C++ step and the Python step compute the same numbers (float64, to rounding)."""
    model, w, x, y, v = problem("lenet28", 3, "soft")
    fs._seq_enabled = True
    try:
        assert fs._seq(fs.cached_plan(model), w, x)
        cpp = fs.inner_hvp(model, w, x, y, "soft", v, True)
        fs._seq_enabled = False
        py = fs.inner_hvp(model, w, x, y, "soft", v, True)
    finally:
        fs._seq_enabled = True
    for a, b in zip(cpp, py):
        assert rel(a, b) < 1e-13


def test_reference_backend_runs_conv_pool_blocks_unfused():
    """Without the conv_pool kernels the ConvPool block runs its unfused Python layers."""
    from fastdistill import ops

    model, w, x, y, v = problem("lenet8", 2, "softmax")
    want = fs.autograd_inner_hvp(model, w, x, y, "softmax", v, True)
    ops.set_backend("reference")
    try:
        assert "unfused" in fs.describe(model) or "Python" in fs.describe(model)
        got = fs.inner_hvp(model, w, x, y, "softmax", v, True)
    finally:
        ops.set_backend(None)
    for a, b in zip(got, want):
        assert rel(a, b) < TOL
