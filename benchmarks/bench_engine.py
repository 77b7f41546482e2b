"""One outer iteration (hypergradient of the outer loss w.r.t. data, labels and step sizes),
``unroll`` engine vs ``adjoint`` engine, time and peak tensor memory, on the shapes for which
docs/algorithm.md §10 gives the original code's figures. Each case is one benchmark group; the peak memory
of each run is in ``extra_info["peak_mb"]``.

Original code, 2-core CPU (docs/algorithm.md §10): LeNet fixed init S=10 E=3: 0.147 s, 146 MB; T=3: 0.058 s;
random init 4 nets: 0.67 s, 282 MB; AlexCifarNet T=30: ~4 s, 2.7 GB.
"""

from __future__ import annotations

import os

import pytest
import torch

from fastdistill.engine import FlatModel, hypergradient, sample_weights
from fastdistill.engine.hypergrad import default_checkpoint_every
from fastdistill.models import AlexCifarNet, LeNet
from fastdistill.utils.memory import peak_memory

LARGE = os.environ.get("FASTDISTILL_BENCH_LARGE") == "1"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

# name -> (model constructor, channels, size, steps S, epochs E, nets B, images per step)
CASES = {
    "lenet-fixed-S10E3": (LeNet, 1, 28, 10, 3, 1, 10),
    "lenet-fixed-S1E3": (LeNet, 1, 28, 1, 3, 1, 10),
    "lenet-random-4nets-S10E3": (LeNet, 1, 28, 10, 3, 4, 10),
    "lenet-random-32nets-S10E3": (LeNet, 1, 28, 10, 3, 32, 10),
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
    if "32nets" in case:
        pytest.skip("32 nets: see test_fused_inner_step (fewer rounds)")
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


# name -> hypergradient keyword arguments of each engine / checkpoint schedule
SCHEDULES = {
    "unroll": {"engine": "unroll"},
    "adjoint-sqrt": {"engine": "adjoint", "checkpoint_every": "sqrt"},  # every ~sqrt(T) steps
    # plain revolve: <= 8 stored vectors, all of them possibly during the outer pass
    "adjoint-revolve-8": {"engine": "adjoint", "checkpoint_slots": 8, "checkpoint_outer_slots": 8},
    # binomial, <= 8 stored, <= 2 of them while the outer pass runs
    "adjoint-binomial-8-outer-2": {"engine": "adjoint", "checkpoint_slots": 8},
    "adjoint-default": {"engine": "adjoint"},  # binomial, <= 2 stored
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("T", [3, 30, 100, 300])
def test_memory_vs_unroll_length(benchmark, schedule, T):
    """LeNet, 10 images, real batch 256: peak tensor memory as T grows, and the time it costs
    (the binomial schedules recompute more steps than sqrt(T) checkpoints to stay flat)."""
    benchmark.group = f"memory vs T, T={T}"  # schedules side by side
    kwargs = dict(SCHEDULES[schedule])
    if kwargs.get("checkpoint_every") == "sqrt":
        kwargs["checkpoint_every"] = default_checkpoint_every(T)
    model, w0, data, labels, _, real_x, real_y = _problem("lenet-fixed-S1E3", "cpu")
    raw = torch.full((T,), -3.9)
    args = (model, w0, data, labels, raw, real_x[:256], real_y[:256])
    _, peak = peak_memory(lambda: hypergradient(*args, **kwargs))
    benchmark.extra_info["peak_mb"] = round(peak / 2**20, 1)
    benchmark.extra_info["T"] = T
    benchmark.pedantic(lambda: hypergradient(*args, **kwargs), rounds=2, iterations=1)


# -- issue 3: the fused inner step --------------------------------------------------------------
# unroll (autograd oracle) vs adjoint with the autograd inner step vs adjoint with the fused
# inner step (fastdistill.engine.fused: hand-derived HVPs, conv_pool kernels, seq_step).
FUSED_CASES = ["lenet-fixed-S10E3", "lenet-random-4nets-S10E3", "lenet-random-32nets-S10E3"]
IMPLS = {
    "unroll": ("unroll", False),
    "adjoint-reference": ("adjoint", False),  # autograd double backward per step
    "adjoint-fused": ("adjoint", True),
}


def tensor_peak_mb(fn) -> float:
    """Peak tensor memory of ``fn()`` in MB (CPU profiler allocation records, in time order)."""
    return peak_memory(fn)[1] / 2**20


def _run_impl(problem, impl: str, **kwargs):
    from fastdistill.engine.fused import step as fused_step

    engine, fused = IMPLS[impl]
    fused_step.set_fused(fused)
    try:
        return hypergradient(*problem, engine=engine, **kwargs)
    finally:
        fused_step.set_fused(None)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", FUSED_CASES)
def test_fused_inner_step(benchmark, case, impl):
    """One outer iteration on the CPU, the three implementations side by side per case."""
    benchmark.group = f"fused inner step {case} cpu"
    problem = _problem(case, "cpu")
    benchmark.extra_info["peak_mb"] = round(tensor_peak_mb(lambda: _run_impl(problem, impl)), 1)
    rounds = 2 if "32nets" in case else 5
    benchmark.pedantic(lambda: _run_impl(problem, impl), rounds=rounds, iterations=1)


def side_by_side(cases=FUSED_CASES, rounds: int = 5, **kwargs) -> list[dict]:
    """Interleaved rounds of the three implementations in one process (the fair comparison on
    a shared machine): best wall and CPU time per implementation, peak tensor memory, and the
    max relative difference of the fused adjoint's gradients from the unroll's."""
    import time

    rows = []
    for case in cases:
        problem = _problem(case, "cpu")
        n = 2 if "32nets" in case else rounds
        wall = {i: [] for i in IMPLS}
        cpu = {i: [] for i in IMPLS}
        outs = {i: _run_impl(problem, i, **({} if i == "unroll" else kwargs)) for i in IMPLS}
        for _ in range(n):
            for impl in IMPLS:
                args = {} if impl == "unroll" else kwargs
                t0, c0 = time.perf_counter(), time.thread_time()
                _run_impl(problem, impl, **args)
                wall[impl].append(time.perf_counter() - t0)
                cpu[impl].append(time.thread_time() - c0)
        a, u = outs["adjoint-fused"], outs["unroll"]
        diff = max(
            float((x - y).norm() / y.norm().clamp_min(1e-30))
            for x, y in ((a.grad_data, u.grad_data), (a.grad_raw_lrs, u.grad_raw_lrs))
        )
        for impl in IMPLS:
            args = {} if impl == "unroll" else kwargs
            peak = tensor_peak_mb(lambda: _run_impl(problem, impl, **args))  # noqa: B023
            rows.append(
                {
                    "case": case,
                    "impl": impl,
                    "wall_s": min(wall[impl]),
                    "cpu_s": min(cpu[impl]),
                    "speedup_wall": min(wall["unroll"]) / min(wall[impl]),
                    "speedup_cpu": min(cpu["unroll"]) / min(cpu[impl]),
                    "peak_mb": peak,
                    "rel_diff_vs_unroll": diff if impl == "adjoint-fused" else None,
                }
            )
    return rows


if __name__ == "__main__":  # python benchmarks/bench_engine.py [checkpoint_every]
    import sys

    extra = {"checkpoint_every": int(sys.argv[1])} if len(sys.argv) > 1 else {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {extra or 'defaults'}")
    for r in side_by_side(**extra):
        print(
            f"{r['case']:26s} {r['impl']:18s} wall {r['wall_s'] * 1e3:8.1f} ms "
            f"(x{r['speedup_wall']:.2f})  cpu {r['cpu_s'] * 1e3:8.1f} ms (x{r['speedup_cpu']:.2f})"
            f"  peak {r['peak_mb']:7.1f} MB"
            + (f"  rel diff {r['rel_diff_vs_unroll']:.1e}" if r["rel_diff_vs_unroll"] else "")
        )
