"""fastdistill.ops.keep_freed_memory: freed CPU blocks stay in the process, so an iteration that
allocates what the last one freed does not page-fault it in again (glibc, subprocesses: the
setting is per process and sticks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_PROBE = """
import json, resource, sys, torch
from fastdistill import ops
state = ops.keep_freed_memory() if sys.argv[1] == "apply" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):  # warm-up: the heap grows to its steady size
    x = torch.empty(64 << 18).fill_(1.0)  # 64 MiB, touched
    del x
before = faults()
for _ in range(5):
    x = torch.empty(64 << 18).fill_(1.0)
    del x
print(json.dumps({"state": state, "faults": faults() - before, "info": ops.backend_info()["malloc"]}))
"""


def _probe(mode: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only"
)


def test_freed_blocks_are_reused_without_page_faults():
    kept = _probe("apply")
    assert kept["state"] == "on" and kept["info"] == "on"
    # 5 x 64 MiB re-allocated: 81,920 pages fault in again without the setting (glibc
    # occasionally places one block afresh: at most one round's 16,384 here)
    assert kept["faults"] <= 20000, kept
    default = _probe("none")
    assert default["state"] is None and default["info"] is None
    assert default["faults"] > 70000, default


def test_opt_out_leaves_the_allocator_alone():
    got = _probe("apply", FASTDISTILL_MALLOC="default")
    assert got["state"] == "off (FASTDISTILL_MALLOC=default)"
    assert got["faults"] > 70000, got
