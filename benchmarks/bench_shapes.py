"""The named shapes of ``fastdistill bench`` (A-F, see ``fastdistill.bench``) as pytest-benchmark
cases: one outer iteration (hypergradient + Adam step) per round, grouped by shape so the
engines of one shape compare side by side. The comparison with the original code is
``../shared/tools/original/side_by_side.py`` (interleaved); its results are in RESULTS.md."""

from __future__ import annotations

import pytest
import torch

from fastdistill.bench import SHAPES, _iteration, make_problem

FAST = ["A", "B", "C"]  # D, E, F take seconds per iteration: opt in with -k


@pytest.mark.parametrize("engine", ["adjoint", "unroll"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_outer_iteration(benchmark, shape, engine):
    if shape not in FAST and not benchmark.disabled and engine == "unroll":
        pytest.skip("the unroll oracle of the large shapes takes minutes per round")
    benchmark.group = f"shape {shape}: {SHAPES[shape].about}"
    p = make_problem(shape)
    params = [p.data.requires_grad_(), p.raw_lrs.requires_grad_(), p.labels.requires_grad_()]
    opt = torch.optim.Adam(params, lr=0.01, betas=(0.5, 0.999))
    run = _iteration(p, engine, opt, params)
    run()  # warm-up: plan building, first-call allocations
    rounds = 15 if shape in FAST else 3
    benchmark.pedantic(run, rounds=rounds, iterations=1)
