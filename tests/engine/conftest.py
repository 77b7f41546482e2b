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
