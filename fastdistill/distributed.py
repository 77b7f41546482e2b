"""Scale-out over ranks (``torchrun``): each rank computes the hypergradient of its share of the
iteration, the shares are summed with one all-reduce, and every rank takes the same Adam step.

Every rank draws the same real batch and the same nets (their generators are seeded alike), then
keeps its shard: the nets when their number divides evenly over the ranks (random init with
several nets per iteration), otherwise the real batch. Each share is weighted by its size, so the
sum equals the single-process hypergradient up to rounding (exactly the same function; models
with dropout draw their masks per shard, so those differ). Only rank 0 writes files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Shard", "all_reduce_sum", "is_main_rank", "rank_and_world"]


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
