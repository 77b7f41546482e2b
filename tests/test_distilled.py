"""The distilled set: initialisation, schedule, safe save/load."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastdistill.distilled import DistilledSet, inverse_softplus


def test_class_interleaved_onehot_labels_and_step_sizes():
    d = DistilledSet.initialize(
        num_classes=10,
        sample_shape=(1, 28, 28),
        steps=2,
        epochs=3,
        images_per_class=2,
        distill_lr=0.02,
    )
    assert d.data.shape == (2, 20, 1, 28, 28) and d.labels.shape == (2, 20, 10)
    assert d.classes[0].tolist() == list(range(10)) * 2
    assert torch.equal(d.labels.argmax(-1), d.classes)
    assert d.total_steps == 6 and d.raw_lrs.shape == (6,)
    assert torch.allclose(d.lrs, torch.full((6,), 0.02))


def test_fewer_examples_than_classes_cycle_through_classes():
    d = DistilledSet.initialize(num_classes=10, sample_shape=(4,), steps=3, classes_per_step=5)
    assert d.classes.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("init", ["smoothed", "random"])
def test_other_label_inits(init):
    g = torch.Generator().manual_seed(0)
    d = DistilledSet.initialize(num_classes=4, sample_shape=(3,), label_init=init, generator=g)
    if init == "smoothed":
        assert torch.allclose(d.labels.sum(-1), torch.ones(1, 4))
        assert torch.allclose(d.labels.max(-1).values, torch.full((1, 4), 0.9))
    else:
        assert d.labels.std() > 0.3 and not torch.equal(d.labels, F.one_hot(d.classes, 4).float())


def test_binary_labels_are_scalars():
    d = DistilledSet.initialize(num_classes=2, sample_shape=(5, 3), binary=True, images_per_class=2)
    assert d.label_kind == "binary" and d.labels.shape == (1, 4)
    assert d.labels.tolist() == [[0.0, 1.0, 0.0, 1.0]]


def test_inverse_softplus():
    for x in (1e-4, 0.02, 1.0, 30.0):
        assert math.isclose(
            F.softplus(torch.tensor(inverse_softplus(x), dtype=torch.float64)), x, rel_tol=1e-12
        )
    with pytest.raises(ValueError, match="positive"):
        inverse_softplus(0.0)


def test_save_load_round_trip(tmp_path):
    d = DistilledSet.initialize(
        num_classes=3, sample_shape=(2, 2), steps=2, epochs=2, meta={"dataset": {"name": "x"}}
    )
    d.init_weights = torch.randn(17)
    d.labels.add_(0.25)
    path = d.save(tmp_path / "set.safetensors")
    e = DistilledSet.load(path)
    for name in ("data", "labels", "raw_lrs", "classes", "init_weights"):
        assert torch.equal(getattr(d, name), getattr(e, name)), name
    assert (e.epochs, e.label_kind, e.learn_labels, e.meta) == (2, "soft", True, d.meta)
    # safetensors, not pickle: the file starts with its JSON header length
    assert not path.read_bytes().startswith(b"\x80")
    assert not list(tmp_path.glob(".*.tmp"))


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        DistilledSet.load(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a fastdistill distilled set"):
        DistilledSet.load(tmp_path / "other.safetensors")


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="T = S\\*E"):
        DistilledSet(
            torch.zeros(2, 3, 4),
            torch.zeros(2, 3, 5),
            torch.zeros(5),
            torch.zeros(2, 3, dtype=torch.long),
            epochs=2,
        )
    with pytest.raises(ValueError, match="classes_per_step"):
        DistilledSet.initialize(num_classes=3, sample_shape=(1,), classes_per_step=4)


@pytest.mark.parametrize("fail_at", ["write", "fsync"])
def test_a_full_disk_during_save_keeps_the_previous_file(tmp_path, monkeypatch, fail_at):
    """ENOSPC in the middle of a save: the error reaches the caller, the file on disk is still
    the last complete one, and no temp file is left behind."""
    import errno
    import io
    import os

    from fastdistill import distilled as mod

    path = tmp_path / "ckpt.safetensors"
    first = {"w": torch.arange(6.0)}
    mod.atomic_save_safetensors(first, path, {"kind": "test"})
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if fail_at == "write":
        real_open = open

        class Full(io.FileIO):
            def write(self, b):
                full()

        monkeypatch.setattr(
            "builtins.open",
            lambda p, mode="r", *a, **k: (
                Full(p, "wb") if mode == "wb" else real_open(p, mode, *a, **k)
            ),
        )
    else:
        monkeypatch.setattr(mod.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        mod.atomic_save_safetensors({"w": torch.ones(6)}, path, {"kind": "test"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors"]
    tensors, _ = mod.load_safetensors(path)
    assert torch.equal(tensors["w"], first["w"])
