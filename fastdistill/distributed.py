"""Scale-out over ranks (``torchrun``), with results that do not depend on the number of ranks.

An outer iteration is cut into *units* that do not depend on the world size (:class:`WorkPlan`):
with several random-init nets per iteration, groups of nets (default one net per unit); with one
net, fixed-size pieces of the real batch. Every rank draws the same real batch and the same nets
(their generators are seeded alike) and computes the units it owns (contiguous blocks). In the
default ``reduce="ordered"`` the per-unit results are exchanged (:func:`gather_units`: each rank
fills its rows of a zero buffer, one all-reduce; every row has exactly one non-zero addend, so
the exchange is exact) and summed in unit order (:func:`ordered_sum`) on every rank, the same
operations a single process performs. So 1, 2 or 4 ranks give the same distilled set bit for bit
(same threads per process); adding ranks changes the speed only. Batch units share the
real-batch outer pass (:func:`ordered_outer`); the reverse sweep through the inner steps then
runs on every rank (it is one net).

``reduce="allreduce"`` is the plain scheme: each rank computes its shard of the nets (or of the
real batch) in one call and one all-reduce sums the weighted shares. Fewer, larger calls, less
exchanged data, but float rounding then depends on the number of ranks. Only rank 0 writes files.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "BATCH_UNITS",
    "REDUCES",
    "Shard",
    "WorkPlan",
    "all_reduce_sum",
    "gather_units",
    "is_main_rank",
    "ordered_outer",
    "ordered_sum",
    "rank_and_world",
]

Reduce = Literal["ordered", "allreduce"]
REDUCES: tuple[str, ...] = ("ordered", "allreduce")
#: Pieces the real batch is cut into when an iteration has one net (reduce="ordered").
BATCH_UNITS = 8


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_rank() -> bool:
    return rank_and_world()[0] == 0


@dataclass(frozen=True)
class Shard:
    """This rank's slice of the nets ``[B]`` and of the real batch ``[N]``, and its weight."""

    nets: slice
    batch: slice
    share: float

    @staticmethod
    def of(nets: int, batch: int, rank: int, world: int) -> Shard:
        if world == 1:
            return Shard(slice(0, nets), slice(0, batch), 1.0)
        if nets % world == 0:
            k = nets // world
            return Shard(slice(rank * k, (rank + 1) * k), slice(0, batch), 1.0 / world)
        if batch < world:
            raise ValueError(f"real batch of {batch} cannot be split over {world} ranks")
        bounds = torch.linspace(0, batch, world + 1).round().long().tolist()
        lo, hi = bounds[rank], bounds[rank + 1]
        return Shard(slice(0, nets), slice(lo, hi), (hi - lo) / batch)


def all_reduce_sum(tensors: list[Tensor]) -> list[Tensor]:
    """Sum ``tensors`` over ranks with one collective (flattened into one buffer)."""
    if rank_and_world()[1] == 1:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, i = [], 0
    for t in tensors:
        out.append(flat[i : i + t.numel()].view_as(t))
        i += t.numel()
    return out


@dataclass(frozen=True)
class WorkPlan:
    """The units of one outer iteration: ``units`` groups of ``nets // units`` nets each
    (``kind="nets"``), or ``units`` pieces of the real batch (``kind="batch"``, one net)."""

    kind: Literal["nets", "batch"]
    units: int

    @staticmethod
    def of(nets: int, batch: int, units: int | None = None) -> WorkPlan:
        if nets > 1:
            units = nets if units is None else units
            if units < 1 or nets % units:
                raise ValueError(
                    f"rank_units={units} must divide nets_per_iteration={nets} (each unit is "
                    "a group of nets)"
                )
            return WorkPlan("nets", units)
        units = min(BATCH_UNITS if units is None else units, batch)
        if units < 1:
            raise ValueError(f"rank_units must be >= 1, got {units}")
        return WorkPlan("batch", units)

    def owned(self, rank: int, world: int) -> range:
        """The units of ``rank``: contiguous blocks of ``ceil(units / world)``."""
        k = math.ceil(self.units / world)
        return range(min(self.units, rank * k), min(self.units, (rank + 1) * k))

    def check_world(self, world: int) -> None:
        if self.kind == "nets" and self.units % world:
            raise ValueError(
                f"{self.units} units of nets cannot be shared evenly by {world} ranks; use a "
                f"world size that divides {self.units}, set rank_units, or --set "
                "reduce=allreduce (results then depend on the number of ranks)"
            )
        if self.units < world:
            raise ValueError(
                f"{world} ranks for {self.units} units: some ranks would idle; set "
                f"rank_units to a multiple of {world} (or use fewer ranks)"
            )

    def batch_bounds(self, batch: int) -> list[int]:
        """Piece boundaries of a real batch of ``batch`` examples (batch units)."""
        return torch.linspace(0, batch, self.units + 1).round().long().tolist()


def gather_units(local: Tensor, units: range, total: int) -> Tensor:
    """``[len(units), M]`` rows of this rank's units -> ``[total, M]`` rows of every unit, in
    unit order, on every rank. Exact: each row has one non-zero addend in the all-reduce."""
    if rank_and_world()[1] == 1:
        return local
    rows = local.new_zeros((total, local.shape[1]))
    rows[units.start : units.stop] = local
    dist.all_reduce(rows, op=dist.ReduceOp.SUM)
    return rows


def ordered_sum(rows: Tensor, shares: Sequence[float]) -> Tensor:
    """``sum_u shares[u] * rows[u]``, added in unit order (the same operations on any number
    of ranks)."""
    total = rows[0] * shares[0]
    for u in range(1, rows.shape[0]):
        total.add_(rows[u], alpha=shares[u])
    return total


def ordered_outer(
    plan: WorkPlan,
    value_and_grad: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]],
    x: Tensor,
    y: Tensor,
) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """The adjoint's real-batch outer pass over batch units: this rank computes its pieces
    (``value_and_grad(w, x_piece, y_piece)`` -> per-net loss ``[B]``, gradient ``[B, P]``), the
    pieces are exchanged and summed in order, weighted by their size."""
    rank, world = rank_and_world()
    n = x.shape[0]
    bounds = plan.batch_bounds(n)
    mine = plan.owned(rank, world)
    shares = [(bounds[u + 1] - bounds[u]) / n for u in range(plan.units)]

    def outer(w: Tensor) -> tuple[Tensor, Tensor]:
        rows = []
        for u in mine:
            lo, hi = bounds[u], bounds[u + 1]
            v, g = value_and_grad(w, x[lo:hi], y[lo:hi])
            rows.append(torch.cat([v.reshape(-1), g.reshape(-1)]))
        b = w.shape[0]
        local = torch.stack(rows) if rows else w.new_zeros((0, b + w.numel()))
        total = ordered_sum(gather_units(local, mine, plan.units), shares)
        return total[:b], total[b:].view_as(w)

    return outer


def leave_together(timeout_s: float = 120.0) -> None:
    """Leave the default process group only once every rank is done with it.

    A gloo barrier can return on one rank while its own last message to a peer is still in
    flight; a rank that then tears its group down closes the socket under that peer, whose
    gloo thread aborts the process ("terminate called without an active exception"). After the
    barrier each rank therefore checks in on the group's store (which no rank's gloo owns) and
    waits for all the others before destroying its group.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.barrier()
        store = dist.distributed_c10d._get_default_store()
        key = f"fastdistill/leave/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        world = dist.get_world_size()
        deadline = time.monotonic() + timeout_s
        count = store.add(key, 1)
        while count < world and time.monotonic() < deadline:
            time.sleep(0.005)
            count = store.add(key, 0)
    finally:
        dist.destroy_process_group()
