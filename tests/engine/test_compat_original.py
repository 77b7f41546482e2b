"""The original code's own trainer, switched to fastdistill, against itself unswitched.

Drives ilia10000/dataset-distillation at 2856332f (path in $FASTDISTILL_ORIGINAL_CODE; skipped
without it) through the driver in benchmarks/bench_compat.py: its ``Trainer`` with its own
``forward``/``backward`` and with them replaced by ``fastdistill.compat.steps_hypergradient``,
same parameters and real batch; the leaves' gradients must agree to float32 precision.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_compat.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("fastdistill_bench_compat", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def original(bench):
    path, why = bench.original_path()
    if path is None:
        pytest.skip(why)
    return bench.load_original(path)


@pytest.mark.parametrize(
    "steps, epochs, static_labels",
    [(2, 1, False), (1, 2, False), (1, 2, True)],
    ids=["2steps-soft", "1step-2epochs-soft", "1step-2epochs-fixed-labels"],
)
@pytest.mark.parametrize("engine", ["adjoint", "unroll"])
def test_switched_trainer_matches_the_original(bench, original, steps, epochs, static_labels,
                                               engine):  # fmt: skip
    a, b = bench.pair(original, (steps, epochs, 0.05), engine, real_batch=64,
                      static_labels=static_labels)  # fmt: skip
    assert b.trainer.forward is not a.trainer.forward  # only the switched one is patched
    want, got = bench.gradients(a), bench.gradients(b)
    assert set(got) == ({"data", "lr"} if static_labels else {"data", "label", "lr"})
    assert all(float(g.norm()) > 0 for g in want.values())
    agree = bench.agreement(got, want)
    assert max(agree.values()) < 1e-4, agree
    # the original's own loop then steps Adam on the gradients it was handed
    before = [p.detach().clone() for p in b.trainer.params]
    bench.outer_iteration(b)
    assert all(not torch.equal(x, p) for x, p in zip(before, b.trainer.params))
