"""Checkpoint schedules of the adjoint engine: bounded memory, each step reversed once, optimal
recomputation, and exact hypergradients (float64, against ``unroll``) under every schedule."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

import pytest
import torch
from engine_problems import DropoutMLP, make_problem

from fastdistill.engine import FlatModel, hypergradient
from fastdistill.engine.checkpointing import (
    Action,
    binomial_advances,
    binomial_schedule,
    uniform_schedule,
)
from fastdistill.models import LeNet
from fastdistill.utils.memory import peak_memory


def simulate(actions: Iterable[Action], n: int, start: int = 0) -> dict[str, int]:
    """Run a schedule without tensors, asserting every action is legal and that steps
    ``start + n - 1`` .. ``start`` are each reversed exactly once, in that order."""
    cur, stored, peak, advances, next_rev = start, set(), 0, 0, start + n - 1
    at_last = 0
    for kind, t in actions:
        if kind == "advance":
            assert cur == t < start + n - 1, (kind, t, cur)
            cur, advances = t + 1, advances + 1
        elif kind == "store":
            assert cur == t and t not in stored and t != start, (kind, t, cur, stored)
            stored.add(t)
            peak = max(peak, len(stored))
        elif kind == "restore":
            assert t == start or t in stored, (kind, t, stored)
            cur = t
        elif kind == "free":
            assert t in stored, (kind, t, stored)
            stored.remove(t)
        else:
            assert kind == "reverse" and cur == t == next_rev, (kind, t, cur, next_rev)
            if t == start + n - 1:
                at_last = len(stored)
            next_rev -= 1
    assert next_rev == start - 1, f"steps {start}..{next_rev} never reversed"
    assert not stored, f"left stored: {sorted(stored)}"
    return {"peak_stored": peak, "advances": advances, "stored_at_last": at_last}


@cache
def fewest_advances(n: int, snaps: int) -> int:
    """Brute-force optimum over all split points (the held start counts as a snap)."""
    if n == 1:
        return 0
    if snaps == 1:
        return n * (n - 1) // 2
    return min(
        j + fewest_advances(n - j, snaps - 1) + fewest_advances(j, snaps) for j in range(1, n)
    )


@pytest.mark.parametrize("slots", range(11))
def test_binomial_schedule_is_bounded_complete_and_optimal(slots):
    for n in range(1, 121):
        for start in (0, 5):
            sim = simulate(binomial_schedule(n, slots, start), n, start)
            assert sim["peak_stored"] <= slots, (n, slots, sim)
            assert sim["advances"] == binomial_advances(n, slots), (n, slots, sim)
        if n <= 50:
            assert sim["advances"] == fewest_advances(n, slots + 1), (n, slots)
        if n <= slots + 2:  # enough slots for every vector: nothing is recomputed
            assert sim["advances"] == n - 1


@cache
def fewest_advances_outer(T: int, k: int, slots: int) -> int:
    """Brute force over the positions of k sweep checkpoints: sweep, then revolve per segment."""

    @cache
    def rest(pos: int, i: int) -> int:
        if i == k:
            return fewest_advances(T - pos, slots - i + 1)
        return min(
            fewest_advances(m, slots - i + 1) + rest(pos + m, i + 1)
            for m in range(1, T - pos - (k - i) + 1)
        )

    return T + rest(0, 0)


@pytest.mark.parametrize("slots", range(1, 8))
def test_outer_slots_bound_the_last_step_and_stay_optimal(slots):
    for outer in range(slots):
        for n in range(1, 90):
            sim = simulate(binomial_schedule(n, slots, 2, outer), n, 2)
            assert sim["peak_stored"] <= slots, (n, slots, outer, sim)
            assert sim["stored_at_last"] <= outer, (n, slots, outer, sim)
            assert sim["advances"] == binomial_advances(n, slots, outer), (n, slots, outer)
            if 3 <= n <= 40:
                best = fewest_advances_outer(n - 1, min(outer, n - 2), slots)
                assert sim["advances"] == best, (n, slots, outer, sim, best)
            # never worse than keeping the sweep empty, never better than plain revolve
            assert binomial_advances(n, slots) <= sim["advances"]
            assert sim["advances"] <= binomial_advances(n, slots, 0)


def test_binomial_schedule_long_unrolls():
    sim = simulate(binomial_schedule(301, 8), 301)  # T=300 plus the outer loss
    assert sim["peak_stored"] <= 8 and sim["advances"] == binomial_advances(301, 8) == 918
    sim = simulate(binomial_schedule(5001, 2), 5001)  # deep splits, no recursion limit
    assert sim["peak_stored"] <= 2
    sim = simulate(binomial_schedule(301, 8, 0, 2), 301)  # T=300, 8 slots, 2 in the outer pass
    assert sim["peak_stored"] <= 8 and sim["stored_at_last"] <= 2
    assert sim["advances"] == binomial_advances(301, 8, 2) == 1034


@pytest.mark.parametrize("every", [1, 2, 3, 5, 18])
def test_uniform_schedule_is_complete_and_frees_as_it_goes(every):
    for n in range(1, 80):
        sim = simulate(uniform_schedule(n, every, 3), n, 3)
        T = n - 1
        assert sim["peak_stored"] <= max(0, -(-T // every) - 1) + min(every, T)
        assert sim["advances"] <= 2 * T


def _agree(a, u, tol: float = 1e-10) -> None:
    rel = lambda x, y: float((x - y).norm() / y.norm().clamp_min(1e-300))
    assert rel(a.outer_loss, u.outer_loss) <= 1e-12
    assert rel(a.final_weights, u.final_weights) <= 1e-12
    pairs = [(a.grad_data, u.grad_data), (a.grad_raw_lrs, u.grad_raw_lrs)]
    if u.grad_labels is not None:
        pairs.append((a.grad_labels, u.grad_labels))
    for x, y in pairs:
        assert y.abs().sum() > 0
        assert rel(x, y) <= tol


@pytest.mark.parametrize(
    "name, steps, epochs, slots",
    [
        ("mlp", 1, 1, 1),  # T=1
        ("mlp", 1, 1, 0),
        ("mlp", 3, 1, 1),  # every vector recomputed from w0 but one
        ("mlp", 1, 7, 0),  # T=7, nothing stored: quadratic recomputation
        ("mlp", 3, 4, 2),  # T=12, not a power of two
        ("mlp", 2, 9, 3),  # T=18, several levels of splits
        ("mlp", 5, 4, None),  # T=20, default slots: recomputes
        ("lenet", 2, 3, 1),  # T=6
    ],
)
def test_binomial_adjoint_equals_unroll(name, steps, epochs, slots):
    model, w0, data, labels, raw, rx, ry = make_problem(name, nets=2, steps=steps, epochs=epochs)
    a = hypergradient(model, w0, data, labels, raw, rx, ry, checkpoint_slots=slots)
    u = hypergradient(model, w0, data, labels, raw, rx, ry, engine="unroll")
    _agree(a, u)


@pytest.mark.parametrize("slots, outer", [(3, 0), (3, 1), (3, 3), (5, 2), (2, 0)])
def test_outer_slots_adjoint_equals_unroll(slots, outer):
    model, w0, data, labels, raw, rx, ry = make_problem("mlp", nets=2, steps=3, epochs=5)  # T=15
    a = hypergradient(
        model,
        w0,
        data,
        labels,
        raw,
        rx,
        ry,
        checkpoint_slots=slots,
        checkpoint_outer_slots=outer,
    )
    u = hypergradient(model, w0, data, labels, raw, rx, ry, engine="unroll")
    _agree(a, u)


@pytest.mark.parametrize("slots, truncate", [(1, 3), (0, 5), (2, 11)])
def test_binomial_adjoint_with_truncation(slots, truncate):
    model, w0, data, labels, raw, rx, ry = make_problem("mlp", steps=3, epochs=4)
    a = hypergradient(
        model, w0, data, labels, raw, rx, ry, checkpoint_slots=slots, truncate=truncate
    )
    u = hypergradient(model, w0, data, labels, raw, rx, ry, engine="unroll", truncate=truncate)
    _agree(a, u)
    assert torch.all(a.grad_raw_lrs[: 12 - truncate] == 0)


@pytest.mark.parametrize(
    "schedule",
    [
        {"checkpoint_slots": 1},
        {"checkpoint_slots": 3},
        {"checkpoint_slots": 3, "checkpoint_outer_slots": 0},
        {"checkpoint_every": 4},
        {},
    ],
)
def test_schedules_replay_dropout_masks(schedule):
    torch.manual_seed(0)
    model = FlatModel(DropoutMLP().double())
    w0 = torch.randn(2, model.num_params, dtype=torch.float64) * 0.3
    data = torch.randn(3, 5, 1, 4, 4, dtype=torch.float64)
    labels = torch.eye(3, dtype=torch.float64)[torch.arange(5) % 3].expand(3, 5, 3).clone()
    raw = torch.full((13,), -1.0, dtype=torch.float64)  # T=13: recomputed with <= 3 slots
    rx, ry = torch.randn(8, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    a = hypergradient(model, w0, data, labels, raw, rx, ry, rng_seed=123, **schedule)
    u = hypergradient(model, w0, data, labels, raw, rx, ry, engine="unroll", rng_seed=123)
    _agree(a, u)


def test_schedule_options_are_checked():
    p = make_problem("mlp")
    with pytest.raises(ValueError, match="not both"):
        hypergradient(*p, checkpoint_every=2, checkpoint_slots=2)
    with pytest.raises(ValueError, match="checkpoint_slots"):
        hypergradient(*p, checkpoint_slots=-1)
    with pytest.raises(ValueError, match="checkpoint_every"):
        hypergradient(*p, checkpoint_every=0)
    with pytest.raises(ValueError, match="not both"):
        hypergradient(*p, checkpoint_every=2, checkpoint_outer_slots=1)
    with pytest.raises(ValueError, match="_outer_slots"):
        hypergradient(*p, checkpoint_outer_slots=-1)
    with pytest.raises(ValueError, match="not both"):
        hypergradient(*p, checkpoint_slots=2, checkpoint_memory=10**6)
    with pytest.raises(ValueError, match="checkpoint_memory"):
        hypergradient(*p, checkpoint_memory=-1)


@pytest.mark.parametrize("memory_vectors", [0, 1, 3, 12, 13, 100])
def test_memory_budget_schedule_equals_unroll(memory_vectors):
    """Any budget (none, some, all of the T=13 vectors) gives the oracle's hypergradient."""
    p = make_problem("mlp")
    model, w0 = p[0], p[1]
    raw = torch.full((13,), -1.0, dtype=torch.float64)
    args = (model, w0, p[2], p[3], raw, p[5], p[6])
    vector = w0.numel() * w0.element_size()
    a = hypergradient(*args, rng_seed=1, checkpoint_memory=memory_vectors * vector)
    u = hypergradient(*args, engine="unroll", rng_seed=1)
    _agree(a, u)


def test_default_schedule_stores_every_vector():
    """Within the default budget nothing is recomputed: T advances for T steps."""
    from fastdistill.engine.hypergrad import _checkpoint_schedule

    schedule = _checkpoint_schedule(None, None, None, None, vector_bytes=61706 * 4)
    actions = list(schedule(31, 0))
    assert sum(a == "advance" for a, _ in actions) == 30
    assert sum(a == "store" for a, _ in actions) == 29  # w_0 is held by the caller
    tight = _checkpoint_schedule(None, None, None, 4 * 61706 * 4, vector_bytes=61706 * 4)
    assert max(_live_stores(list(tight(31, 0)))) <= 4


def _live_stores(actions):
    live, out = 0, []
    for a, _ in actions:
        live += {"store": 1, "free": -1}.get(a, 0)
        out.append(live)
    return out


def test_slot_schedule_memory_is_flat_in_T():
    """Adjoint peak at long T within 1.2x of T=3 (LeNet, real batch 256, float32) under a fixed
    slot count: 2 vectors stored during the outer pass like T=3, plus at most the recomputed
    current one (the sqrt(T) schedule holds ~2 sqrt(T) at once, +15 vectors at T=80)."""
    torch.manual_seed(0)
    model = FlatModel(LeNet())
    w0 = torch.randn(1, model.num_params) * 0.05
    data = torch.randn(1, 10, 1, 28, 28)
    labels = torch.eye(10).unsqueeze(0)
    rx, ry = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))

    def peak(T: int) -> int:
        raw = torch.full((T,), -4.0)
        hg = lambda: hypergradient(model, w0, data, labels, raw, rx, ry, checkpoint_slots=8)
        return peak_memory(hg)[1]

    vector = model.num_params * 4
    short, long = peak(3), peak(80)
    assert long <= 1.2 * short, (short, long)
    assert long - short <= 1.5 * vector, (short, long)
