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
import random
import signal
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
