"""One outer iteration (hypergradient of the outer loss w.r.t. data, labels and step sizes),
``unroll`` engine vs ``adjoint`` engine, time and peak tensor memory, on the shapes for which
SPEC §10 gives the original code's figures. Each case is one benchmark group; the peak memory
of each run is in ``extra_info["peak_mb"]``.

Original code, 2-core CPU (SPEC §10): LeNet fixed init S=10 E=3: 0.147 s, 146 MB; T=3: 0.058 s;
random init 4 nets: 0.67 s, 282 MB; AlexCifarNet T=30: ~4 s, 2.7 GB.
"""

from __future__ import annotations

import os

import pytest
import torch

from fastdistill.engine import FlatModel, hypergradient, sample_weights
from fastdistill.models import AlexCifarNet, LeNet
from fastdistill.utils.memory import peak_memory

LARGE = os.environ.get("FASTDISTILL_BENCH_LARGE") == "1"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

# name -> (model constructor, channels, size, steps S, epochs E, nets B, images per step)
CASES = {
    "lenet-fixed-S10E3": (LeNet, 1, 28, 10, 3, 1, 10),
    "lenet-fixed-S1E3": (LeNet, 1, 28, 1, 3, 1, 10),
    "lenet-random-4nets-S10E3": (LeNet, 1, 28, 10, 3, 4, 10),
    "alexcifarnet-fixed-S10E3": (AlexCifarNet, 3, 32, 10, 3, 1, 10),
}


def _problem(case: str, device: str):
    ctor, c, size, S, E, B, n = CASES[case]
    gen = torch.Generator().manual_seed(0)
    model = FlatModel(ctor(c, 10, size).to(device))
    w0 = sample_weights(model, B, generator=gen).to(device)
    data = torch.randn(S, n, c, size, size, generator=gen).to(device)
    labels = torch.eye(10).repeat(S, n // 10, 1).to(device)
    raw = torch.full((S * E,), -3.9).to(device)  # softplus = 0.02
    real_x = torch.randn(1024, c, size, size, generator=gen).to(device)
    real_y = torch.randint(0, 10, (1024,), generator=gen).to(device)
    return model, w0, data, labels, raw, real_x, real_y


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("engine", ["unroll", "adjoint"])
@pytest.mark.parametrize("case", list(CASES))
def test_outer_iteration(benchmark, case, engine, device):
    if case.startswith("alexcifarnet") and device == "cpu" and not LARGE:
        pytest.skip("AlexCifarNet T=30 takes minutes on a CPU; set FASTDISTILL_BENCH_LARGE=1")
    benchmark.group = f"outer iteration {case} {device}"
    problem = _problem(case, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        out = hypergradient(*problem, engine=engine)
        sync()
        return out

    _, peak = peak_memory(run, device)
    benchmark.extra_info["peak_mb"] = round(peak / 2**20, 1)
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("engine", ["unroll", "adjoint"])
@pytest.mark.parametrize("T", [3, 30, 300])
def test_memory_vs_unroll_length(benchmark, engine, T):
    """LeNet, 10 images, real batch 256: peak tensor memory as T grows (time is secondary)."""
    benchmark.group = f"memory vs T, {engine}"
    model, w0, data, labels, _, real_x, real_y = _problem("lenet-fixed-S1E3", "cpu")
    raw = torch.full((T,), -3.9)
    args = (model, w0, data, labels, raw, real_x[:256], real_y[:256])
    _, peak = peak_memory(lambda: hypergradient(*args, engine=engine))
    benchmark.extra_info["peak_mb"] = round(peak / 2**20, 1)
    benchmark.extra_info["T"] = T
    benchmark.pedantic(lambda: hypergradient(*args, engine=engine), rounds=1, iterations=1)
