"""Scale-out over ranks (torchrun): two gloo ranks reach the single-process distilled set.

Fixed init with one net splits the real batch; random init with 2 nets per iteration splits the
nets. Float64, deterministic MLP: the summed shares equal the single-process hypergradient up to
rounding, so after a few Adam steps the sets agree to ~1e-12.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from fastdistill.config import DistillConfig
from fastdistill.distributed import Shard

CONFIGS = {
    "batch-split": {"init": "fixed", "nets_per_iteration": 1, "real_batch_size": 257},
    "net-split": {"init": "random", "nets_per_iteration": 2, "real_batch_size": 128},
}


def _config(kind: str) -> DistillConfig:
    return DistillConfig(
        dataset="digits", model="mlp", model_kwargs={"hidden": (16,)}, steps=2, epochs=2,
        iterations=4, decay_epochs=1, eval_nets=2, dtype="float64", **CONFIGS[kind],
    )  # fmt: skip


def _rank(rank: int, world: int, port: int, kind: str, out: str) -> None:
    import torch.distributed as dist

    from fastdistill.data import load_image_dataset
    from fastdistill.distiller import Distiller

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from fastdistill import distiller as outer

        seen = []  # the real-batch sizes this rank's hypergradients saw
        real = outer.hypergradient
        outer.hypergradient = lambda *a, **k: seen.append(a[5].shape[0]) or real(*a, **k)
        d = Distiller(_config(kind), load_image_dataset("digits"))
        d.fit(progress=False, checkpoint_path=os.path.join(out, "ckpt.safetensors"))
        tensors = [t.detach() for t in d.distilled.learnable()]
        torch.save((tensors, outer.rank_and_world(), seen), os.path.join(out, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_two_ranks_reach_the_single_process_set(kind, tmp_path):
    from fastdistill.data import load_image_dataset
    from fastdistill.distiller import Distiller

    mp.spawn(_rank, args=(2, _free_port(), kind, str(tmp_path)), nprocs=2, join=True)
    single = Distiller(_config(kind), load_image_dataset("digits"))
    single.fit(progress=False)
    want = [t.detach() for t in single.distilled.learnable()]
    batch = CONFIGS[kind]["real_batch_size"]
    for rank in (0, 1):
        got, rank_world, seen = torch.load(tmp_path / f"r{rank}.pt")
        assert rank_world == (rank, 2)
        # batch split: each rank saw its half of the real batch; net split: all of it
        half = len(range(batch)[Shard.of(1, batch, rank, 2).batch])
        assert half in (batch // 2, batch - batch // 2)
        assert set(seen) == ({half} if kind == "batch-split" else {batch})
        for a, b in zip(got, want):
            assert float((a - b).norm() / b.norm()) < 1e-10, (kind, rank)
    assert (tmp_path / "ckpt.safetensors").exists()  # written by rank 0


def test_shards_cover_the_iteration_once():
    for nets, batch, world in ((4, 1024, 2), (1, 257, 2), (3, 100, 4), (1, 5, 3)):
        shards = [Shard.of(nets, batch, r, world) for r in range(world)]
        assert abs(sum(s.share for s in shards) - 1.0) < 1e-12
        net_ids = [i for s in shards for i in range(nets)[s.nets]]
        batch_ids = [i for s in shards for i in range(batch)[s.batch]]
        # either the nets or the batch are partitioned; the other is whole on every rank
        assert sorted(net_ids) == list(range(nets)) or sorted(batch_ids) == list(range(batch))
    with pytest.raises(ValueError, match="cannot be split"):
        Shard.of(1, 2, 0, 3)
