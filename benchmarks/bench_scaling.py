"""Outer iterations per second on K = 1, 2, ... processes (torch.distributed), for the LeNet
random-init preset with 4, 8 and 16 nets per iteration, with the ordered (world-size
invariant, the default) and the plain all-reduce reduction.

    .venv/bin/python benchmarks/bench_scaling.py --ks 1 2 --nets 4 8 16 --json scaling.json
    .venv/bin/python benchmarks/bench_scaling.py --preset mnist-lenet-fixed-10 --nets 1  # batch units
    python benchmarks/bench_scaling.py --backend nccl --device cuda --ks 1 2 4 8   # one GPU per rank

Every process runs one torch thread (``--threads``), so K processes use K cores; efficiency is
``rate(K) / (K * rate(1))`` for the same reduction. The preset's MNIST is used when it is on the
machine (``../shared/data``), else scikit-learn's digits at 28x28 (``--dataset``). Each
configuration: ``--warmup`` untimed iterations, then ``--iters`` timed ones between barriers,
repeated ``--rounds`` times (configurations one after another, each in fresh processes); min
and median of the rounds reported.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

PRESET = "mnist-lenet-random-100"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(preset: str, dataset: str, nets: int, reduce: str):
    from fastdistill.config import get_preset

    config = get_preset(preset).config.replace(
        nets_per_iteration=nets, reduce=reduce, iterations=10**6, validation=0.0
    )
    if dataset != "mnist":
        config = config.replace(dataset=dataset, image_size=28)
    return config


def _worker(rank: int, world: int, port: int, job: dict, out: str) -> None:
    import torch.distributed as dist

    from fastdistill.distiller import Distiller

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"], rank) if job["device"] == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group(job["backend"], rank=rank, world_size=world)
    try:
        config = _config(job["preset"], job["dataset"], job["nets"], job["reduce"])
        d = Distiller(config, device=device)
        for _ in range(job["warmup"]):
            d.step()
        times = []
        for _ in range(job["rounds"]):
            if world > 1:
                dist.barrier()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for _ in range(job["iters"]):
                d.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if world > 1:
                dist.barrier()
            times.append((time.perf_counter() - t0) / job["iters"])
        if rank == 0:
            Path(out).write_text(json.dumps(times))
    finally:
        if world > 1:
            dist.destroy_process_group()


def run(job: dict, k: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.json")
        mp.spawn(_worker, args=(k, _free_port(), job, out), nprocs=k, join=True)
        return json.loads(Path(out).read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=PRESET, help=f"default {PRESET}")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--nets", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--reduces", nargs="+", default=["ordered", "allreduce"])
    ap.add_argument("--dataset", default=None, help="mnist (default when present) or digits")
    ap.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    dataset = args.dataset
    if dataset is None:
        from fastdistill.data.image_datasets import load_image_dataset

        try:
            load_image_dataset("mnist")
            dataset = "mnist"
        except (OSError, ValueError):
            dataset = "digits"
    rows = []
    for nets in args.nets:
        for reduce in args.reduces:
            for k in args.ks:
                if nets > 1 and nets % k:
                    continue
                job = {**vars(args), "nets": nets, "reduce": reduce, "dataset": dataset}
                times = run(job, k)
                rows.append(
                    {"nets": nets, "reduce": reduce, "K": k, "min_s": min(times),
                     "median_s": statistics.median(times), "samples": len(times)}
                )  # fmt: skip
                r = rows[-1]
                print(
                    f"nets {nets:>2}  {reduce:<9}  K={k}  {1 / r['median_s']:.3f} it/s "
                    f"(median {r['median_s']:.3f} s, min {r['min_s']:.3f} s)",
                    flush=True,
                )
    base = {(r["nets"], r["reduce"]): r["median_s"] for r in rows if r["K"] == 1}
    print("\n| nets | reduce | K | it/s (median) | s/it min / median | efficiency |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        t1 = base.get((r["nets"], r["reduce"]))
        eff = f"{t1 / (r['K'] * r['median_s']):.2f}" if t1 else "-"
        print(
            f"| {r['nets']} | {r['reduce']} | {r['K']} | {1 / r['median_s']:.3f} | "
            f"{r['min_s']:.3f} / {r['median_s']:.3f} | {eff} |"
        )
    if args.json:
        meta = {"preset": args.preset, "dataset": dataset, "backend": args.backend, "device": args.device,
                "threads_per_process": args.threads, "torch": torch.__version__}  # fmt: skip
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
