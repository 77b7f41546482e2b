"""Arithmetic floors of the benchmark shapes on this machine: how fast an outer iteration could
possibly be, and so the largest speed-up over the original code that arithmetic allows.

Per shape: the matrix-product and convolution FLOPs of one outer iteration as the original
algorithm does them (fastdistill's ``unroll`` engine: T differentiable inner steps, then one
backward through them all), counted with torch's FLOP formulas; this machine's single-precision
GEMM rate at the chosen thread count (1024^3 ``torch.mm``, best of several); and the floor, FLOPs
over that rate. With ``--side-by-side DIR`` (the JSON files of
``../shared/tools/original/side_by_side.py``) it adds the original's median and the ceiling
ratio original / floor.

    python benchmarks/floors.py --threads 2 A B C D E F
    python benchmarks/floors.py --threads 2 --side-by-side /tmp/side-by-side A B

Random-init shapes (C) count one net's iteration times the nets per iteration, as the original
loops over its nets one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from fastdistill.bench import SHAPES, _iteration, make_problem


class _CountFlops(TorchDispatchMode):
    """FLOPs of the ops that torch has formulas for (matmuls, convolutions and their
    backward), per op. (``FlopCounterMode`` itself hooks modules, which ``autograd.grad``
    through a ``functional_call`` does not allow.)"""

    def __init__(self) -> None:
        super().__init__()
        self.registry = FlopCounterMode(display=False).flop_registry
        self.flops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in self.registry:
            self.flops[str(packet)] += self.registry[packet](*args, **kwargs, out_val=out)
        return out


def count_flops(shape: str) -> tuple[float, dict[str, float]]:
    """FLOPs of one outer iteration of ``shape`` by the unroll engine (one net)."""
    p = make_problem(shape)
    if p.nets > 1:
        p.nets = 1
        p.w0 = p.w0[:1]
    params = [p.data.requires_grad_(), p.raw_lrs.requires_grad_(), p.labels.requires_grad_()]
    opt = torch.optim.Adam(params, lr=0.01, betas=(0.5, 0.999))
    run = _iteration(p, "unroll", opt, params)
    run()
    mode = _CountFlops()
    with mode:
        run()
    nets = SHAPES[shape].nets
    per_op = {k: v * nets for k, v in mode.flops.items()}
    return float(sum(per_op.values())), per_op


def gemm_rate(n: int = 1024, repeats: int = 20) -> float:
    """Best single-precision ``torch.mm`` rate (FLOP/s) at the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def original_medians(folder: str, threads: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in SHAPES:
        path = os.path.join(folder, f"{name}_t{threads}.json")
        if os.path.exists(path):
            with open(path) as f:
                out[name] = json.load(f)["variants"]["orig"]["median_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="*", default=list(SHAPES))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--side-by-side", default=None, help="folder of side_by_side.py JSON")
    ap.add_argument("--json", default=None, help="write the table here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rate = gemm_rate()
    orig = original_medians(args.side_by_side, args.threads) if args.side_by_side else {}
    print(f"threads {args.threads}: 1024^3 SGEMM {rate / 1e9:.0f} GFLOP/s")
    rows = []
    for name in args.shapes:
        flops, per_op = count_flops(name)
        floor = flops / rate
        row = {"shape": name, "gflop": flops / 1e9, "floor_s": floor, "threads": args.threads,
               "sgemm_gflops": rate / 1e9, "by_op_gflop": {k: v / 1e9 for k, v in per_op.items()}}  # fmt: skip
        line = f"{name}  {flops / 1e9:8.2f} GFLOP  floor {floor * 1e3:9.1f} ms"
        if name in orig:
            row["original_median_s"] = orig[name]
            row["ceiling_ratio"] = orig[name] / floor
            line += f"  original {orig[name] * 1e3:9.1f} ms  ceiling {orig[name] / floor:5.1f}x"
        print(line + f"  ({SHAPES[name].about})", flush=True)
        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
