"""Fixtures of the op tests (helpers and constants are in fd_op_utils.py)."""

from __future__ import annotations

import os

import pytest
import torch

import fastdistill.ops  # noqa: F401  (registers nothing by itself; the ops load lazily)
from fastdistill import ops


@pytest.fixture(autouse=True)
def _backend_auto():
    """Every op test starts in auto backend mode, whatever FASTDISTILL_BACKEND says (the forced
    modes are tested in subprocesses), and ends with the environment's mode."""
    ops.set_backend("auto")
    yield
    ops.set_backend(None)


@pytest.fixture(autouse=True)
def _no_tf32():
    """References in float32 must be float32: on Ampere+ GPUs cuDNN convolutions (and, if a
    user enabled it, matmuls) default to TF32, ~1e-4 relative error, which the kernels (true
    float32) would be blamed for."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="session")
def kernels():
    """``torch.ops.fastdistill``; skips when the extension is deliberately absent, fails when
    it should be there but does not load."""
    if ops.extension_loaded():
        return torch.ops.fastdistill
    reason = ops.backend_info()["reason"]
    if os.environ.get("FASTDISTILL_DISABLE_EXTENSION") or os.environ.get(
        "FASTDISTILL_NO_EXTENSION"
    ):
        pytest.skip(f"extension disabled: {reason}")
    pytest.fail(f"fastdistill._C did not load: {reason}")
