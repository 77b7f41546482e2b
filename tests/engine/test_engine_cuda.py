"""The engine on a CUDA GPU against the CPU (float64 oracle): fused steps, both engines, golden.

Every test builds its problem on the CPU, copies it to the GPU and compares with the CPU result,
so the CUDA kernels the fused steps call (conv_pool, soft_label_loss, the C++ step) are checked
end to end, not only op by op. The golden-reference test runs on the GPU too
(tests/engine/test_hypergrad.py, device parameter).
"""

from __future__ import annotations

import copy

import pytest
import torch
from engine_problems import make_problem
from test_fused_step import MODELS as STEP_MODELS
from test_fused_step import problem

from fastdistill.engine import FlatModel, hypergradient
from fastdistill.engine.fused import step as fs

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("fused_on")]
DEV = "cuda"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def on_gpu(model: FlatModel) -> FlatModel:
    """The same model with its module (parameters and buffers) on the GPU."""
    return FlatModel(copy.deepcopy(model.module).to(DEV))


@pytest.mark.parametrize("kind", ["soft", "binary"])
@pytest.mark.parametrize("nets", [1, 3])
@pytest.mark.parametrize("name", list(STEP_MODELS))
def test_fused_hvp_on_gpu_matches_cpu_autograd(name, nets, kind, impl):
    model, w, x, y, v = problem(name, nets, kind)
    want = fs.autograd_inner_hvp(model, w, x, y, kind, v, True)
    gm = on_gpu(model)
    got = fs.inner_hvp(gm, w.to(DEV), x.to(DEV), y.to(DEV), kind, v.to(DEV), True)
    assert fs.uses_fused(gm, x.to(DEV)), fs.describe(gm)
    for a, b in zip(got, want):
        assert a.device.type == "cuda"
        assert rel(a, b) < 1e-10


@pytest.mark.parametrize("init", ["fixed", "random"])
@pytest.mark.parametrize("name", ["lenet", "alexcifarnet", "convnet", "mlp"])
def test_adjoint_on_gpu_equals_unroll_on_cpu(name, init):
    nets = 1 if init == "fixed" else 3
    model, w0, data, labels, raw, rx, ry = make_problem(name, nets=nets, steps=2, epochs=3)
    u = hypergradient(model, w0, data, labels, raw, rx, ry, engine="unroll")
    args = [t.to(DEV) for t in (w0, data, labels, raw, rx, ry)]
    for engine in ("adjoint", "unroll"):
        a = hypergradient(on_gpu(model), *args, engine=engine, checkpoint_every=2)
        assert a.grad_data.device.type == "cuda"
        assert rel(a.outer_loss, u.outer_loss) < 1e-10
        for x, y in (
            (a.grad_data, u.grad_data),
            (a.grad_labels, u.grad_labels),
            (a.grad_raw_lrs, u.grad_raw_lrs),
        ):
            assert rel(x, y) < 1e-8, engine


def test_float32_on_gpu_is_close_to_float64_on_cpu():
    model, w0, data, labels, raw, rx, ry = make_problem("lenet", nets=2, steps=2, epochs=3)
    u = hypergradient(model, w0, data, labels, raw, rx, ry, engine="unroll")
    gm = FlatModel(copy.deepcopy(model.module).float().to(DEV))
    args = [t.to(DEV, torch.float32) if t.is_floating_point() else t.to(DEV)
            for t in (w0, data, labels, raw, rx, ry)]  # fmt: skip
    a = hypergradient(gm, *args, engine="adjoint")
    assert a.grad_data.dtype == torch.float32
    for x, y in ((a.grad_data, u.grad_data), (a.grad_raw_lrs, u.grad_raw_lrs)):
        assert rel(x, y) < 1e-3
