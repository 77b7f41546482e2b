"""Corrupted artifacts: seeded random byte flips and truncations of checkpoints and distilled
sets. Each must give one line naming the file (exit code 2) or, for the newest checkpoint, a
one-line notice and a resume from the previous checkpoint that still ends bit-identical to the
uninterrupted run. Never a silent load of changed content, never a traceback."""

from __future__ import annotations

import pickle
import random
import shutil
from pathlib import Path

import pytest
import torch

from fastdistill.distilled import DistilledSet, load_safetensors

from .conftest import distill_args, one_error_line, outputs, run_in_process

FLIPS, TRUNCATIONS = 8, 6


def _flip(path: Path, rng: random.Random) -> str:
    data = bytearray(path.read_bytes())
    i = rng.randrange(len(data))
    data[i] ^= rng.randint(1, 255)
    path.write_bytes(bytes(data))
    return f"byte {i} of {len(data)} flipped"


def _truncate(path: Path, rng: random.Random) -> str:
    data = path.read_bytes()
    n = rng.randrange(len(data))
    path.write_bytes(data[:n])
    return f"truncated to {n} of {len(data)} bytes"


CORRUPTIONS = [("flip", i) for i in range(FLIPS)] + [("truncate", i) for i in range(TRUNCATIONS)]


def _corrupt(path: Path, kind: str, i: int, salt: int) -> str:
    rng = random.Random(salt * 1000 + i)
    return (_flip if kind == "flip" else _truncate)(path, rng)


def _same_content(a: Path, b: Path) -> bool:
    ta, ma = load_safetensors(a)
    tb, mb = load_safetensors(b)
    return ma == mb and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.fixture
def run_copy(reference_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    assert (out / "checkpoint.prev.safetensors").is_file()
    return out


@pytest.mark.parametrize(("kind", "i"), CORRUPTIONS)
def test_corrupt_newest_checkpoint_falls_back_to_the_previous(
    kind, i, run_copy, reference_run, capsys
):
    ckpt = run_copy / "checkpoint.safetensors"
    pristine = run_copy.parent / "pristine.safetensors"
    shutil.copy(ckpt, pristine)
    what = _corrupt(ckpt, kind, i, 1)
    rc = run_in_process(distill_args(run_copy, "--resume"))
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err, (what, err)
    lines = err.strip().splitlines()
    if lines:
        assert len(lines) == 1, (what, err)
        assert lines[0].startswith(f"fastdistill: warning: {ckpt}"), (what, err)
        assert "resumed from the previous checkpoint" in lines[0], (what, err)
    else:  # accepted: only possible when the content is unchanged
        assert _same_content(ckpt, pristine), what
    assert outputs(run_copy) == outputs(reference_run), what


@pytest.mark.parametrize(("kind", "i"), CORRUPTIONS[::3])
def test_both_checkpoints_corrupt_is_one_error_line(kind, i, run_copy, capsys):
    for salt, name in ((2, "checkpoint.safetensors"), (3, "checkpoint.prev.safetensors")):
        _corrupt(run_copy / name, kind, i, salt)
    assert run_in_process(distill_args(run_copy, "--resume")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(run_copy / "checkpoint.prev.safetensors") in line


@pytest.mark.parametrize(("kind", "i"), CORRUPTIONS)
def test_corrupt_distilled_set_is_rejected_naming_the_file(kind, i, run_copy, capsys):
    path = run_copy / "distilled.safetensors"
    pristine = run_copy.parent / "pristine.safetensors"
    shutil.copy(path, pristine)
    what = _corrupt(path, kind, i, 4)
    rc = run_in_process(["evaluate", str(path), "--nets", "1", "--device", "cpu"])
    captured = capsys.readouterr()
    if rc == 0:  # accepted: only possible when the content is unchanged
        assert _same_content(path, pristine), what
        return
    assert rc == 2, (what, captured.err)
    assert str(path) in one_error_line(captured.err), what


def test_foreign_and_non_finite_files(run_copy, tmp_path, capsys):
    path = run_copy / "distilled.safetensors"
    good = DistilledSet.load(path)

    def evaluate(p: Path) -> str:
        assert run_in_process(["evaluate", str(p), "--nets", "1", "--device", "cpu"]) == 2
        return one_error_line(capsys.readouterr().err)

    pkl = tmp_path / "set.pt"
    pkl.write_bytes(pickle.dumps({"data": [1, 2, 3]}))
    assert f"{pkl} is not a safetensors file (it is a pickle file" in evaluate(pkl)
    torch.save({"data": torch.zeros(3)}, tmp_path / "zip.pt")
    assert "is not a safetensors file (it is a zip" in evaluate(tmp_path / "zip.pt")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    assert "is not a safetensors file (it is empty)" in evaluate(tmp_path / "empty.safetensors")
    nan = good.to()
    nan.data.fill_(float("nan"))
    nan.save(tmp_path / "nan.safetensors")
    line = evaluate(tmp_path / "nan.safetensors")
    assert "nan.safetensors: tensor 'data' holds" in line and "non-finite" in line
    # a pickle in place of the checkpoint: named, no unpickling, no fallback to guess
    (run_copy / "checkpoint.prev.safetensors").unlink()
    (run_copy / "checkpoint.safetensors").write_bytes(pickle.dumps([1]))
    assert run_in_process(distill_args(run_copy, "--resume")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{run_copy / 'checkpoint.safetensors'} is not a safetensors file" in line


def test_old_files_without_checksums_load_with_one_warning(run_copy, capsys):
    from safetensors.torch import save_file

    from fastdistill.distilled import CHECKSUM_KEY, INTEGRITY_KEY

    path = run_copy / "distilled.safetensors"
    tensors, meta = load_safetensors(path)
    old = {k: v for k, v in meta.items() if k not in (CHECKSUM_KEY, INTEGRITY_KEY)}
    save_file(tensors, str(path), metadata=old)
    assert run_in_process(["evaluate", str(path), "--nets", "1", "--device", "cpu"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fastdistill: warning: {path} has no checksums")
