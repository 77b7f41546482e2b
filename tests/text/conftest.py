"""Fixtures for the text tests: tiny word vectors and the real data copies when present."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

_REPO_ROOT = Path(__file__).resolve().parents[2]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from fastdistill.data import WordVectors, default_data_root

TINY_WORDS = ["the", "a", "good", "bad", "movie", "film", "great", "awful", "what", "is", "?", "."]


@pytest.fixture
def tiny_vectors() -> WordVectors:
    """Row i of the table is (i + 1) * ones(4), so lookups are easy to check."""
    table = torch.arange(1, len(TINY_WORDS) + 1, dtype=torch.float32)[:, None].repeat(1, 4)
    return WordVectors(TINY_WORDS, table, name="tiny-4d")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = default_data_root()
    if root is None:
        pytest.skip("../shared/data not found (set FASTDISTILL_DATA_ROOT)")
    return root


@pytest.fixture(scope="session")
def glove_sample(shared_data: Path) -> Path:
    path = shared_data / "glove-sample" / "glove.6B.50d.head2446.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="session")
def trec_root(shared_data: Path) -> Path:
    if not (shared_data / "trec" / "train_5500.label").is_file():
        pytest.skip("real TREC copy not found")
    return shared_data
