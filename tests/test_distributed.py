"""Scale-out over ranks (torchrun), gloo on the CPU.

``reduce="ordered"`` (the default): the same distilled set, bit for bit in float32, on 1, 2 or 4
ranks, for random init (units of nets) and fixed init (pieces of the real batch); a checkpoint
written on one number of ranks resumes on another and ends bit-identical; the random-init
evaluation split over ranks equals the single-process one. ``reduce="allreduce"``: each rank
sees its shard, and the sum matches one process up to rounding (float64).
"""

from __future__ import annotations

import os
import uuid

import pytest
import torch
import torch.multiprocessing as mp

from fastdistill.config import DistillConfig
from fastdistill.distributed import Shard, WorkPlan, ordered_sum

LENET = {"model": "lenet", "image_size": 28}
MLP = {"model": "mlp", "model_kwargs": {"hidden": (16,)}}
RUNS = {
    "lenet-random": {**LENET, "init": "random", "nets_per_iteration": 4, "real_batch_size": 128},
    "lenet-fixed": {**LENET, "init": "fixed", "nets_per_iteration": 1, "real_batch_size": 200},
    "mlp-batch-split": {**MLP, "init": "fixed", "nets_per_iteration": 1, "real_batch_size": 257},
    "mlp-net-split": {**MLP, "init": "random", "nets_per_iteration": 2, "real_batch_size": 128},
}


def _config(run: str, **kw) -> DistillConfig:
    base = {
        "dataset": "digits",
        "steps": 1,
        "epochs": 2,
        "iterations": 4,
        "decay_epochs": 1,
        "eval_nets": 6,
    }
    return DistillConfig(**{**base, **RUNS[run], **kw})


def _tensors(d) -> list[torch.Tensor]:
    return [t.detach().clone() for t in d.distilled.learnable()]


def _rank(rank: int, world: int, store: str, job: dict, out: str) -> None:
    """One rank of a job: distill (optionally resume from / stop at a checkpoint), save."""
    import torch.distributed as dist

    from fastdistill import distiller as outer
    from fastdistill.data import load_image_dataset
    from fastdistill.distiller import Distiller
    from fastdistill.distributed import leave_together

    torch.set_num_threads(1)
    # a file store: no rank hosts a server that its exit could take from the others' teardown
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    try:
        seen = []  # the real-batch sizes this rank's hypergradients saw
        real = outer.hypergradient
        outer.hypergradient = lambda *a, **k: seen.append(a[5].shape[0]) or real(*a, **k)
        d = Distiller(_config(job["run"], **job.get("config", {})), load_image_dataset("digits"))
        ckpt = os.path.join(out, "ckpt.safetensors")
        if job.get("resume"):
            assert d.resume(ckpt) is not None
        d.fit(job.get("until"), progress=False, checkpoint_path=ckpt, checkpoint_every=1)
        result = {"tensors": _tensors(d), "rank_world": outer.rank_and_world(), "seen": seen}
        if job.get("evaluate"):
            result["accuracies"] = d.evaluate(n_nets=6, seed=5, chunk=2).accuracies
        if job.get("baselines"):
            result["baselines"] = _baselines(d)
        torch.save(result, os.path.join(out, f"r{rank}.pt"))
    except BaseException:
        dist.destroy_process_group()
        raise
    leave_together()  # gloo can abort a rank whose peer is still mid-exchange


def _baselines(d) -> dict[str, torch.Tensor]:
    """The controls of a distilled set and two baselines over 3 draws, as accuracy vectors."""
    from fastdistill.baselines import run_baselines
    from fastdistill.controls import control_accuracies

    c = d.config
    out = {k: v.accuracies for k, v in control_accuracies(d).items() if v is not None}
    names = ("random_real", "knn_random_real")
    base = run_baselines(
        d.data, d.model, steps=1, epochs=2, init=c.init, n_nets=7, draws=3, lr=0.1,
        init_weights=d.distilled.init_weights, names=names, seed=1,
    )  # fmt: skip
    out.update({k: v.accuracies for k, v in base.items()})
    return out


def _spawn(world: int, job: dict, out) -> list[dict]:
    store = out / f"store-{uuid.uuid4().hex}"  # one per group: a file store is not reusable
    mp.spawn(_rank, args=(world, str(store), job, str(out)), nprocs=world, join=True)
    return [torch.load(out / f"r{r}.pt") for r in range(world)]


def _single(job: dict, out=None):
    from fastdistill.data import load_image_dataset
    from fastdistill.distiller import Distiller

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in every rank: the same bits need the same threads
    try:
        d = Distiller(_config(job["run"], **job.get("config", {})), load_image_dataset("digits"))
        ckpt = None if out is None else out / "ckpt.safetensors"
        if job.get("resume"):
            assert d.resume(ckpt) is not None
        d.fit(job.get("until"), progress=False, checkpoint_path=ckpt, checkpoint_every=1)
        return d
    finally:
        torch.set_num_threads(threads)


def _same_bits(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("run, world", [("lenet-random", 2), ("lenet-random", 4),
                                        ("lenet-fixed", 2)])  # fmt: skip
def test_ordered_reduce_gives_the_same_bits_on_any_number_of_ranks(run, world, tmp_path):
    want = _tensors(_single({"run": run}))
    results = _spawn(world, {"run": run}, tmp_path)
    for rank, r in enumerate(results):
        assert r["rank_world"] == (rank, world)
        assert _same_bits(r["tensors"], want), (run, world, rank)
    batch = RUNS[run]["real_batch_size"]
    if run == "lenet-random":  # units of one net, each on its owner rank, on the full batch
        assert all(r["seen"] == [batch] * (4 // world) * 4 for r in results)
    assert (tmp_path / "ckpt.safetensors").exists()  # written by rank 0


def test_allreduce_is_a_different_rounding_but_the_same_function(tmp_path):
    """Float32, 2 ranks: the plain all-reduce is close to the ordered result, not equal."""
    ordered = _tensors(_single({"run": "lenet-random"}))
    job = {"run": "lenet-random", "config": {"reduce": "allreduce"}}
    got = _spawn(2, job, tmp_path)[0]["tensors"]
    for a, b in zip(got, ordered):
        assert float((a - b).norm() / b.norm()) < 1e-4


@pytest.mark.parametrize("run", ["mlp-batch-split", "mlp-net-split"])
def test_allreduce_shards_reach_the_single_process_set(run, tmp_path):
    job = {"run": run, "config": {"reduce": "allreduce", "dtype": "float64"}}
    results = _spawn(2, job, tmp_path)
    want = _tensors(_single(job))
    batch = RUNS[run]["real_batch_size"]
    for rank, r in enumerate(results):
        half = len(range(batch)[Shard.of(1, batch, rank, 2).batch])
        # batch split: each rank saw its half of the real batch; net split: all of it
        assert set(r["seen"]) == ({half} if run == "mlp-batch-split" else {batch})
        for a, b in zip(r["tensors"], want):
            assert float((a - b).norm() / b.norm()) < 1e-10, (run, rank)


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_on_another_number_of_ranks(first, then, tmp_path):
    want = _tensors(_single({"run": "lenet-random"}))
    job = {"run": "lenet-random", "until": 2}
    if first == 1:
        _single(job, tmp_path)
    else:
        _spawn(first, job, tmp_path)
    job = {"run": "lenet-random", "resume": True}
    if then == 1:
        got = _tensors(_single(job, tmp_path))
    else:
        got = _spawn(then, job, tmp_path)[0]["tensors"]
    assert _same_bits(got, want)


def test_random_init_evaluation_split_over_ranks_equals_one_process(tmp_path):
    job = {"run": "lenet-random", "until": 1, "evaluate": True}
    d = _single(job)
    want = d.evaluate(n_nets=6, seed=5, chunk=2).accuracies
    for r in _spawn(2, job, tmp_path):
        assert torch.equal(r["accuracies"], want)


@pytest.mark.parametrize("run", ["lenet-random", "lenet-fixed"])
def test_controls_and_baselines_split_over_ranks_equal_one_process(run, tmp_path):
    """Draw i is trained on rank i mod world; the other ranks keep their generators in step."""
    job = {"run": run, "until": 1, "baselines": True}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want = _baselines(_single(job))
    finally:
        torch.set_num_threads(threads)
    assert set(want) == {"hard_labels", "random_real", "knn_random_real"}
    for r in _spawn(2, job, tmp_path):
        assert r["baselines"].keys() == want.keys()
        for k, v in want.items():
            assert torch.equal(r["baselines"][k], v), (run, k)


def test_work_plans_cover_the_iteration_once():
    for nets, batch, units, world in ((4, 1024, None, 2), (4, 64, 2, 2), (1, 257, None, 2),
                                      (1, 100, 3, 2), (1, 5, None, 4)):  # fmt: skip
        plan = WorkPlan.of(nets, batch, units)
        owned = [u for r in range(world) for u in plan.owned(r, world)]
        assert owned == list(range(plan.units))
        if plan.kind == "batch":
            bounds = plan.batch_bounds(batch)
            assert bounds[0] == 0 and bounds[-1] == batch and bounds == sorted(bounds)
    with pytest.raises(ValueError, match="must divide"):
        WorkPlan.of(4, 64, 3)
    with pytest.raises(ValueError, match="cannot be shared evenly"):
        WorkPlan.of(4, 64).check_world(3)


def test_ordered_sum_adds_in_unit_order():
    rows = torch.tensor([[1e8], [1.0], [-1e8]], dtype=torch.float32)
    # (1e8 + 1) - 1e8 is 0 in float32; another order would give 1
    assert ordered_sum(rows, [1.0, 1.0, 1.0]).item() == 0.0


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
