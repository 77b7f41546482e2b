"""Fault injection: SIGKILL, SIGTERM and SIGINT at seeded random moments of a short digits run,
then `--resume auto`; the final distilled set and report (timings aside) must be bit-identical
to an uninterrupted run.

A moment is "after the line of iteration k, plus d seconds" (k and d drawn from a seeded RNG),
so it falls anywhere in an iteration, a checkpoint write, the validation or the final
evaluation. SIGTERM/SIGINT must end in one line and exit code 143/130 with the checkpoint at
the iteration the line names; SIGKILL leaves whatever the atomic writes left.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from safetensors import safe_open

from .conftest import ITERATIONS, distill_args, outputs, popen, run_in_process

MOMENTS_PER_SIGNAL = 5
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)


def _moments(sig: int) -> list[tuple[int, float]]:
    rng = random.Random(1400 + int(sig))
    return [(rng.randint(1, ITERATIONS - 2), rng.uniform(0.0, 0.08)) for _ in range(5)]


def _interrupt(out: Path, sig: int, k: int, delay: float) -> tuple[int, str]:
    import time

    proc = popen(distill_args(out, "--log-every", "1"))
    for line in proc.stdout:
        if line.startswith(f"iteration {k}/"):
            break
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _checkpoint_iteration(out: Path) -> int:
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        return json.loads(f.metadata()["state"])["iteration"]


@pytest.fixture(scope="module")
def interrupted_runs(tmp_path_factory):
    """All interrupted runs, three at a time (each is mostly interpreter start-up)."""
    jobs = []
    for sig in SIGNALS:
        for i, (k, delay) in enumerate(_moments(sig)):
            out = tmp_path_factory.mktemp(f"{signal.Signals(sig).name}-{i}") / "run"
            jobs.append((sig, k, delay, out))
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda j: _interrupt(j[3], j[0], j[1], j[2]), jobs))
    return [(*job, *res) for job, res in zip(jobs, results)]


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_interrupted_runs_resume_bit_identical(sig, interrupted_runs, reference_run, capsys):
    want = outputs(reference_run)
    runs = [r for r in interrupted_runs if r[0] == sig]
    assert len(runs) == MOMENTS_PER_SIGNAL
    identical = 0
    for _, k, delay, out, rc, err in runs:
        where = f"{signal.Signals(sig).name} after iteration {k} + {delay:.3f}s: rc {rc}, {err!r}"
        assert "Traceback" not in err, where
        if sig == signal.SIGKILL:
            assert rc == -signal.SIGKILL, where
        else:
            assert rc == 128 + sig, where
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("fastdistill: interrupted"), where
            if " at iteration " in lines[0]:  # stopped inside the loop: at a boundary
                n = int(lines[0].split(" at iteration ")[1].split(";")[0])
                assert lines[0].endswith("resume with --resume"), where
                assert _checkpoint_iteration(out) == n, where
            assert not list(out.glob(".*.tmp")), where  # no partial file
        assert run_in_process(distill_args(out, "--resume", "auto")) == 0, where
        assert not list(out.glob(".*.tmp")), where  # orphans of a SIGKILL are removed
        got = outputs(out)
        assert got[1] == want[1], where
        assert got[0] == want[0], where
        identical += 1
    with capsys.disabled():
        print(f"\n{signal.Signals(sig).name}: {identical} of {len(runs)} interrupted runs resumed "
              "bit-identical")  # fmt: skip


def _torchrun(out, *extra: str, restarts: int = 1, kill: str | None = None, rank_logs=False):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FASTDISTILL_DIST_TIMEOUT": "120"}
    env.pop("FASTDISTILL_TEST_KILL", None)
    if kill is not None:
        env["FASTDISTILL_TEST_KILL"] = kill
    logs = Path(out).parent / "torchrun-logs"
    # rank_logs: each rank's streams also go to files (the console copy gets rank prefixes)
    tee = ["--log-dir", str(logs), "--tee", "3"] if rank_logs else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           f"--max-restarts={restarts}", *tee, str(Path(__file__).with_name("faulty_rank.py")),
           *distill_args(out, "--resume", "auto", *extra)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
    proc.rank_logs = _rank_logs(logs) if rank_logs else proc.stderr[-3000:]  # type: ignore[attr-defined]
    return proc


def _rank_logs(logs: Path, tail: int = 2000) -> str:
    """The end of every rank's stderr in every attempt (what an assertion shows on failure:
    torchrun's own stderr interleaves the ranks and cuts them short)."""
    parts = []
    for f in sorted(logs.rglob("stderr.log")):
        text = f.read_text(errors="replace")
        parts.append(f"--- {f.relative_to(logs)} ---\n{text[-tail:]}")
    return "\n".join(parts) or f"(no rank logs under {logs})"


def test_a_rank_killed_under_torchrun_restarts_and_ends_bit_identical(reference_run, tmp_path):
    """Rank 1 is SIGKILLed as it starts iteration 6; torchrun restarts both ranks, they resume
    from rank 0's last checkpoint and end with the set, report and metrics of one process."""
    out = tmp_path / "run"
    proc = _torchrun(out, kill="1:6", restarts=1, rank_logs=True)
    assert proc.returncode == 0, proc.rank_logs
    assert "resumed from" in proc.stdout
    assert outputs(out) == outputs(reference_run)


def test_a_rank_lost_without_restarts_stops_every_rank_with_one_line(tmp_path):
    out = tmp_path / "run"
    proc = _torchrun(out, restarts=0, kill="1:6")
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("fastdistill:")]
    assert lines, proc.stderr[-3000:]
    assert all("Traceback" not in ln for ln in lines)
    assert any("rank 0 of 2" in ln and "lost" in ln for ln in lines), lines
    assert (out / "checkpoint.safetensors").is_file()  # the boundary state survives
