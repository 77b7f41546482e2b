"""Shared helpers for the end-to-end CLI tests: one tiny digits-preset configuration (a run of
12 iterations takes a few seconds, most of it interpreter start-up), run in-process or in a
subprocess, and the comparison of two runs' outputs without their timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from fastdistill.cli import main

ITERATIONS = 12
TINY = [
    "--preset", "digits-lenet-fixed-10", "--iterations", str(ITERATIONS),
    "--set", "eval_nets=2", "--set", "validate_every=4",
    "--checkpoint-every", "1", "--device", "cpu", "--threads", "1", "--quiet",
]  # fmt: skip
TIMING_KEYS = {"distill_wall_time_s", "seconds_per_iteration", "data_load_time_s",
               "evaluation_time_s", "controls_time_s", "wall_time", "time_s", "step_time_s"}  # fmt: skip


def distill_args(out: Path, *extra: str) -> list[str]:
    return ["distill", *TINY, "--out", str(out), *extra]


def run_in_process(args: list[str]) -> int:
    """``main(args)`` with torch's thread count restored afterwards (``--threads 1``)."""
    threads = torch.get_num_threads()
    try:
        return main(args)
    finally:
        torch.set_num_threads(threads)


def popen(args: list[str], **kw: Any) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "fastdistill", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kw,
    )


def _strip_timings(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _strip_timings(v) for k, v in x.items() if k not in TIMING_KEYS}
    if isinstance(x, list):
        return [_strip_timings(v) for v in x]
    return x


def outputs(out: Path) -> tuple[bytes, Any, Any]:
    """The distilled set's bytes, the report and the metrics.jsonl rows without timings."""
    report = json.loads((out / "report.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return (
        (out / "distilled.safetensors").read_bytes(),
        _strip_timings(report),
        _strip_timings(rows),
    )


def one_error_line(err: str) -> str:
    """The stderr of a failed run: exactly one line, ``fastdistill: error: ...``."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("fastdistill: error: "), err
    return lines[0]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    """One uninterrupted run of the tiny configuration (in-process), shared by the modules."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert run_in_process(distill_args(out)) == 0
    return out
