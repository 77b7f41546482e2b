"""RealBatchSampler: epoch coverage, reproducibility and exact resumption."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from fastdistill.data import RealBatchSampler


def _sampler(n: int, bs: int, seed: int = 0) -> RealBatchSampler:
    return RealBatchSampler(n, bs, torch.Generator().manual_seed(seed))


def _draw(s: RealBatchSampler, k: int) -> list[tuple[list[int], bool]]:
    out = []
    for _ in range(k):
        idx, ended = s.next_indices()
        assert idx.dtype == torch.int64
        out.append((idx.tolist(), ended))
    return out


def test_every_index_once_per_epoch() -> None:
    s = _sampler(100, 10)
    assert s.batches_per_epoch == 10
    epochs = []
    for e in range(3):
        assert (s.epoch, s.position) == (e, 0)
        batches = _draw(s, 10)
        assert [ended for _, ended in batches] == [False] * 9 + [True]
        flat = [i for idx, _ in batches for i in idx]
        assert sorted(flat) == list(range(100))
        epochs.append(flat)
    assert s.epoch == 3
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled every epoch


def test_partial_batch_is_dropped() -> None:
    s = _sampler(103, 10)
    assert s.batches_per_epoch == 10
    batches = _draw(s, 10)
    assert all(len(idx) == 10 for idx, _ in batches) and batches[-1][1]
    flat = [i for idx, _ in batches for i in idx]
    assert len(set(flat)) == 100 and set(flat) <= set(range(103))
    assert s.epoch == 1 and s.position == 0
    s.next_indices()
    assert s.position == 10


def test_batch_size_clamped_to_n() -> None:
    s = _sampler(7, 50)
    assert s.batch_size == 7 and s.batches_per_epoch == 1
    for _ in range(3):
        idx, ended = s.next_indices()
        assert ended and sorted(idx.tolist()) == list(range(7))
    assert s.epoch == 3


def test_reproducible_with_same_seed() -> None:
    assert _draw(_sampler(50, 8, seed=3), 20) == _draw(_sampler(50, 8, seed=3), 20)
    assert _draw(_sampler(50, 8, seed=3), 20) != _draw(_sampler(50, 8, seed=4), 20)


@pytest.mark.parametrize("steps", [0, 5, 6, 13])  # 6 = exactly at an epoch boundary
def test_state_dict_resumes_exactly(steps: int) -> None:
    s = _sampler(40, 6, seed=1)  # 6 batches per epoch, 4 dropped
    _draw(s, steps)
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    reference = _draw(s, 25)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    resumed = _sampler(40, 6, seed=999)
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.position) == (state["epoch"], state["position"])
    assert _draw(resumed, 25) == reference


def test_state_dict_contents() -> None:
    s = _sampler(10, 3)
    s.next_indices()
    st = s.state_dict()
    assert (st["n"], st["batch_size"], st["epoch"], st["position"]) == (10, 3, 0, 3)
    assert st["perm"].shape == (10,) and st["generator_state"].dtype == torch.uint8


def test_invalid_arguments_and_state() -> None:
    with pytest.raises(ValueError, match="n >= 1"):
        _sampler(0, 1)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        _sampler(5, 0)
    with pytest.raises(TypeError, match="torch.Generator"):
        RealBatchSampler(5, 1, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="state is for n=10"):
        _sampler(11, 3).load_state_dict(_sampler(10, 3).state_dict())


def test_state_survives_safetensors_and_json(tmp_path: Path) -> None:
    """Checkpoints store the tensors in safetensors and the ints in JSON metadata."""
    import json

    from safetensors.torch import load_file, save_file

    for steps in (0, 7):  # no pending permutation (empty tensor) and mid-epoch
        s = _sampler(30, 4, seed=5)
        _draw(s, steps)
        st = s.state_dict()
        save_file({k: v for k, v in st.items() if torch.is_tensor(v)}, tmp_path / "s.st")
        ints = json.loads(json.dumps({k: v for k, v in st.items() if not torch.is_tensor(v)}))
        reference = _draw(s, 12)
        resumed = _sampler(30, 4, seed=0)
        resumed.load_state_dict({**ints, **load_file(tmp_path / "s.st")})
        assert _draw(resumed, 12) == reference
