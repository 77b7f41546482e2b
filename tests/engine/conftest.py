"""Fixtures for the engine tests."""

from __future__ import annotations

import pytest

GOLDEN = "golden-reference"


@pytest.fixture(scope="session")
def shared_data():
    from fastdistill.data import default_data_root

    root = default_data_root()
    if root is None:
        pytest.skip("../shared/data not found (set FASTDISTILL_DATA_ROOT)")
    return root


@pytest.fixture(scope="session")
def golden_dir(shared_data):
    path = shared_data / GOLDEN
    if not path.is_dir():
        pytest.skip(f"golden reference folder not found at {path}")
    return path


@pytest.fixture
def fused_on():
    """Fused steps on (whatever FASTDISTILL_FUSED says), restored afterwards."""
    from fastdistill.engine.fused import step as fs

    fs.set_fused(True)
    yield
    fs.set_fused(None)


@pytest.fixture(params=["cpp", "python"])
def impl(request, monkeypatch):
    """The one-call C++ step (where the model and the build allow it) or the Python one."""
    from fastdistill.engine.fused import step as fs

    monkeypatch.setattr(fs, "_seq_enabled", request.param == "cpp")
    return request.param
