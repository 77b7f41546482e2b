"""fastdistill.utils.memory.peak_memory: the CPU peak from the profiler's records, with the
profiler's native start/stop logging kept off stderr and stderr itself left working."""

from __future__ import annotations

import os

import torch

from fastdistill.utils.memory import peak_memory


def test_cpu_peak_counts_the_largest_live_set():
    def fn():
        a = torch.empty(1 << 20)  # 4 MiB
        b = torch.empty(1 << 19)  # 2 MiB, both alive
        del a, b
        c = torch.empty(1 << 18)
        return c.numel()

    out, peak = peak_memory(fn)
    assert out == 1 << 18
    assert 6 << 20 <= peak < 7 << 20


def test_profiler_noise_is_silenced_but_stderr_still_works(capfd):
    peak_memory(lambda: torch.ones(16).sum())
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "profiler_start" not in err and "profiler_stop" not in err
    assert err.endswith("after\n")
