"""Shared configuration of the pytest-benchmark suites in benchmarks/ (files bench_*.py).

Run with ``make bench`` (``pytest benchmarks --benchmark-only``). Results depend on the machine
and the day: compare implementations side by side within one run (benchmark groups).
"""

from __future__ import annotations

import pytest


def pytest_report_header(config):
    import torch

    from fastdistill.ops import backend_info

    info = backend_info()
    return [
        f"fastdistill: extension_loaded={info['extension_loaded']} "
        f"built_with_cuda={info['built_with_cuda']} torch={torch.__version__} "
        f"threads={torch.get_num_threads()} cuda_available={info['cuda_available']}"
        + (f" reason={info['reason']}" if info["reason"] else "")
    ]


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
