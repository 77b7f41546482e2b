"""Measure seconds per outer iteration of every preset whose data is here, and write the
reference table ``fastdistill/preset_timings.py`` that ``fastdistill presets`` shows.

    .venv/bin/python tools/measure_presets.py --threads 2 [--only digits-lenet-fixed-10,...]

Each preset: build the Distiller (its data must load without downloads), 2 untimed warm-up
iterations, then the mean of 5 timed ones (``fastdistill.estimate.time_iterations``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import torch

from fastdistill.config import PRESETS
from fastdistill.distiller import Distiller
from fastdistill.estimate import time_iterations
from fastdistill.ops import backend_info

OUT = Path(__file__).resolve().parents[1] / "fastdistill" / "preset_timings.py"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", help="comma-separated preset names")
    ap.add_argument("--timed", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.only.split(",") if args.only else list(PRESETS)
    rows: dict[str, dict] = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            d = Distiller(PRESETS[name].config, device="cpu")
        except (FileNotFoundError, ValueError, OSError) as err:
            print(f"{name}: skipped ({' '.join(str(err).split())[:120]})", flush=True)
            continue
        load = time.perf_counter() - t0
        s = time_iterations(d, args.timed, warmup=args.warmup)
        rows[name] = {"s_per_iteration": round(s, 4), "iterations": d.total_iterations,
                      "load_s": round(load, 1)}  # fmt: skip
        print(f"{name}: {s:.4f} s/it x {d.total_iterations} (load {load:.1f}s)", flush=True)
    info = backend_info()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    machine = (
        f"{_cpu_name()}, {os.cpu_count()} cores, {args.threads} torch threads, torch "
        f"{torch.__version__}, backend {'kernels' if info['extension_loaded'] else 'reference'}, "
        f"load average {load:.1f} at the end (a shared machine: other jobs slow it)"
    )
    text = (
        '"""Seconds per outer iteration of the presets on the reference CPU, measured by\n'
        f"``tools/measure_presets.py`` ({args.warmup} warm-up, mean of {args.timed} timed iterations; presets\n"
        'whose data was not on the machine are missing). Regenerate rather than edit."""\n\n'
        f"MACHINE = {json.dumps(machine)}\n"
        f"DATE = {json.dumps(datetime.date.today().isoformat())}\n"
        f"THREADS = {args.threads}\n"
        f"TIMINGS: dict[str, dict[str, float]] = {json.dumps(rows, indent=4)}\n"
    )
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
