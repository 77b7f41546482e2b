"""Checkpoint schedules for the adjoint engine's reverse sweep: which weights to store, which to
recompute.

The reverse sweep needs the weights ``w_t`` of every step ``t`` in reverse order, but the forward
pass produces them in forward order. A schedule trades stored weight vectors (memory) for
recomputed steps (time). It is a stream of actions over a "current" weight vector:

* ``("advance", t)``: current ``w_t`` -> ``w_{t+1}`` (one inner step, no graph);
* ``("store", t)``: keep the current ``w_t`` in a slot;
* ``("restore", t)``: make the stored ``w_t`` current again;
* ``("free", t)``: drop the stored ``w_t``;
* ``("reverse", t)``: run the adjoint of step ``t`` on the current ``w_t``.

Schedules cover ``n`` reversible steps ``start .. start + n - 1`` and begin with ``w_start``
current and held by the caller (it is not counted as a slot). The adjoint passes ``n = T + 1``:
the last "step" is the outer loss at ``w_T``, so the forward sweep is part of the schedule.

* ``binomial_schedule`` — Griewank's binomial checkpointing (``revolve``): at most ``slots``
  stored vectors whatever ``n`` is, and the fewest recomputed steps any schedule with that many
  slots can have: each step is advanced at most ``r`` times, ``r`` the smallest integer with
  ``C(slots + 1 + r, r) >= n``, i.e. recomputation grows like ``n^(1/slots)``. With
  ``outer_slots`` it also keeps at most that many stored while the last step (the outer loss on
  the real batch, the largest activations of the computation unless chunked) runs, and the
  rest fill up only in the reverse sweep, whose steps are small; checkpoint positions are chosen
  for the fewest advances under both bounds (checked against brute force in the tests).
* ``uniform_schedule`` — a vector every ``k`` steps plus one segment at a time (the older
  ``checkpoint_every`` scheme): ``n / k + k`` stored vectors.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

ActionKind = Literal["advance", "store", "restore", "free", "reverse"]
Action = tuple[ActionKind, int]

# Defaults of the adjoint: at most 8 stored weight vectors (each ``B * P`` numbers), at most 2
# of them while the real-batch outer pass runs (the largest activations of the call); the other
# slots fill only in the reverse sweep, whose small distilled-batch steps need far less memory.
# Measured (LeNet, real batch 256, fused steps, true allocation peaks): the peak is the same
# 4.86 MB at T = 3, 30, 100 and 300, at the time of the sqrt(T) schedule for T <= 30 and +33% at
# T = 300 (2 slots: +110%); sqrt(T) checkpoints grow to 10.8 MB (benchmarks/RESULTS.md).
DEFAULT_SLOTS = 8
DEFAULT_OUTER_SLOTS = 2
# The adjoint's default: as many stored weight vectors as fit in this many bytes (all of them for
# every model and T of the paper), so the forward unroll is not recomputed at all.
DEFAULT_CHECKPOINT_MEMORY = 256 * 2**20


def _beta(snaps: int, reps: int) -> int:
    """Most steps that ``snaps`` checkpoints (start included) reverse with <= reps advances each."""
    return math.comb(snaps + reps, snaps) if reps >= 0 and snaps >= 0 else 0


def _reps(n: int, snaps: int) -> int:
    r = 0
    while _beta(snaps, r) < n:
        r += 1
    return r


def _check(n: int, slots: int, outer_slots: int | None) -> None:
    if n < 1 or slots < 0 or (outer_slots is not None and outer_slots < 0):
        raise ValueError(
            f"need n >= 1 and slots, outer_slots >= 0; got {n=}, {slots=}, {outer_slots=}"
        )


def _revolve_advances(n: int, slots: int) -> int:
    snaps = slots + 1
    r = _reps(n, snaps)
    return r * n - _beta(snaps + 1, r - 1)


def _segments(T: int, k: int, slots: int) -> list[int]:
    """Lengths of the ``k + 1`` segments between the forward sweep's ``k`` checkpoints.

    Segment i is reversed by revolve with ``slots - i`` free slots (checkpoints 1..i are held),
    whose cost is convex and piecewise linear in the length with slope ``r`` between
    ``C(s_i + r - 1, r - 1)`` and ``C(s_i + r, r)`` (``s_i = slots - i + 1`` snaps): so the
    optimum fills every segment up to the same slope ``r``, the smallest that fits ``T``.
    """
    snaps = [slots - i + 1 for i in range(k + 1)]
    r = 0
    while sum(_beta(s, r) for s in snaps) < T:
        r += 1
    lengths = [max(1, _beta(s, r - 1)) for s in snaps]
    rest = T - sum(lengths)
    for i, s in enumerate(snaps):
        extra = min(rest, _beta(s, r) - lengths[i])
        lengths[i] += extra
        rest -= extra
    return lengths


def _outer_k(n: int, slots: int, outer_slots: int | None) -> int | None:
    """Checkpoints of the constrained forward sweep, or None when plain revolve applies."""
    if outer_slots is None or outer_slots >= slots or n <= 2:
        return None
    return min(outer_slots, n - 2)


def binomial_advances(n: int, slots: int, outer_slots: int | None = None) -> int:
    """Advances (recomputed forward steps included) of ``binomial_schedule``: without
    ``outer_slots``, ``r n - C(s+r, r-1)`` with ``s = slots + 1`` snaps counting the start
    (Griewank & Walther, 2000)."""
    _check(n, slots, outer_slots)
    k = _outer_k(n, slots, outer_slots)
    if k is None:
        return _revolve_advances(n, slots)
    lengths = _segments(n - 1, k, slots)
    return n - 1 + sum(_revolve_advances(m, slots - i) for i, m in enumerate(lengths))


def binomial_schedule(
    n: int, slots: int, start: int = 0, outer_slots: int | None = None
) -> Iterator[Action]:
    """Reverse ``n`` steps storing at most ``slots`` weight vectors besides the current one,
    at most ``outer_slots`` of them while the last step runs, with the fewest advances.

    With ``outer_slots`` (below ``slots``): a forward sweep that stores ``outer_slots``
    checkpoints, the last step, then each segment between checkpoints (last first) reversed by
    revolve with the slots its held checkpoints leave free.
    """
    _check(n, slots, outer_slots)
    k = _outer_k(n, slots, outer_slots)
    if k is None:
        yield from _revolve(n, slots, start)
        return
    lengths = _segments(n - 1, k, slots)
    firsts = [start]
    for m in lengths[:-1]:
        firsts.append(firsts[-1] + m)
    stores = set(firsts[1:])
    for t in range(start, start + n - 1):
        if t in stores:
            yield ("store", t)
        yield ("advance", t)
    yield ("reverse", start + n - 1)
    for i in range(k, -1, -1):
        yield ("restore", firsts[i])
        yield from _revolve(lengths[i], slots - i, firsts[i])
        if i > 0:
            yield ("free", firsts[i])


def _revolve(n: int, slots: int, start: int) -> Iterator[Action]:
    """Reverse ``n`` steps storing at most ``slots`` weight vectors besides the current one
    (revolve: the fewest advances for that memory).

    Reversing ``[a, a + n)`` with ``s`` snaps (the held ``w_a`` included): advance ``j`` steps,
    store ``w_{a+j}``, reverse ``[a + j, a + n)`` with ``s - 1`` snaps, free it, restore ``w_a``
    and reverse ``[a, a + j)`` with ``s`` snaps. The split ``j`` keeps both halves on their
    optimal cost line, which makes the whole optimal. Iterative, so long ``n`` cannot hit
    Python's recursion limit.
    """
    stack: list[tuple[str, int, int, int]] = [("call", start, n, slots + 1)]
    while stack:
        kind, a, m, s = stack.pop()
        if kind == "free":
            yield ("free", a)
            continue
        if kind == "restore":
            yield ("restore", a)
            continue
        if m == 1:
            yield ("reverse", a)
        elif s == 1:  # only w_a: advance from it to each step in turn
            for i in range(m - 1, -1, -1):
                if i < m - 1:
                    yield ("restore", a)
                for t in range(a, a + i):
                    yield ("advance", t)
                yield ("reverse", a + i)
        else:
            r = _reps(m, s)
            j = max(1, _beta(s, r - 2), m - _beta(s - 1, r))
            for t in range(a, a + j):
                yield ("advance", t)
            # popped in reverse order: right part, free, restore, left part
            stack.append(("call", a, j, s))
            stack.append(("restore", a, 0, 0))
            if m - j > 1:
                yield ("store", a + j)
                stack.append(("free", a + j, 0, 0))
            # else w_{a+j} is reversed at once: current, no need to store it
            stack.append(("call", a + j, m - j, s - 1))


def uniform_schedule(n: int, every: int, start: int = 0) -> Iterator[Action]:
    """Store every ``every``-th weight vector; recompute one segment at a time in the sweep.

    Stored at once: the ``~n / every`` segment starts plus one segment (the last segment is
    kept from the forward sweep). Each vector is freed as soon as the sweep is past it.
    """
    if n < 1 or every < 1:
        raise ValueError(f"need n >= 1 and every >= 1, got n={n}, every={every}")
    end = start + n - 1  # the last step: reversed straight after the forward sweep
    last = start + ((n - 2) // every) * every if n > 1 else start  # the last segment's start
    for t in range(start, end):
        if t > start and (t >= last or (t - start) % every == 0):
            yield ("store", t)
        yield ("advance", t)
    yield ("reverse", end)
    for seg in range(last, start - 1, -every):
        seg_end = min(seg + every, end)  # this segment is steps seg .. seg_end - 1
        if seg != last:  # recompute it from its first vector
            yield ("restore", seg)
            for t in range(seg, seg_end - 1):
                yield ("advance", t)
                yield ("store", t + 1)
        for t in range(seg_end - 1, seg - 1, -1):
            yield ("restore", t)
            yield ("reverse", t)
            if t > start:
                yield ("free", t)
