"""``fastdistill export``: npz round trip, an ImageFolder torchvision reads, CLI exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fastdistill.cli import main
from fastdistill.distilled import DistilledSet
from fastdistill.export import export_distilled

NAMES = ["zero", "one", "two", "three"]


def tiny_set(meta: bool = True) -> DistilledSet:
    d = DistilledSet.initialize(
        num_classes=4,
        sample_shape=(1, 8, 8),
        steps=3,
        epochs=2,
        generator=torch.Generator().manual_seed(0),
        meta={"dataset": {"kind": "image", "class_names": NAMES, "mean": [0.5], "std": [0.25]}}
        if meta
        else None,
    )
    d.raw_lrs += torch.linspace(-0.3, 0.3, d.total_steps)
    # one example labelled like another class: folders follow the label argmax, not `classes`
    d.labels[0, 0] = torch.tensor([0.1, 0.2, 0.9, -0.1])
    return d


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    tiny_set().save(run / "distilled.safetensors")
    (run / "report.json").write_text("{}")
    return run


def test_npz_round_trip_equals_the_set(tmp_path, run_dir):
    d = DistilledSet.load(run_dir / "distilled.safetensors")
    (path,) = export_distilled(run_dir, "npz", tmp_path / "npz")
    z = np.load(path)
    assert np.array_equal(z["data"], d.data.numpy())
    assert np.array_equal(z["labels"], d.labels.numpy())
    assert np.array_equal(z["lrs"], d.lrs.numpy())
    assert np.array_equal(z["classes"], d.classes.numpy())
    assert z["steps"].shape == (3, 4) and (z["steps"] == np.arange(3)[:, None]).all()
    assert int(z["epochs"]) == 2


def test_imagefolder_is_readable_by_torchvision(tmp_path, run_dir):
    from torchvision.datasets import ImageFolder

    d = DistilledSet.load(run_dir / "distilled.safetensors")
    out = tmp_path / "images"
    export_distilled(run_dir / "distilled.safetensors", "imagefolder", out)
    folder = ImageFolder(str(out))
    assert len(folder) == d.num_samples == 12
    assert sorted(folder.classes) == sorted(NAMES)
    side = json.loads((out / "labels.json").read_text())
    assert len(side["files"]) == 12 and side["lrs"] == pytest.approx(d.lrs.tolist())
    first = next(f for f in side["files"] if f["step"] == 0 and f["index"] == 0)
    assert first["class"] == "two" and first["file"].startswith("two/")
    assert first["label"] == pytest.approx([0.1, 0.2, 0.9, -0.1])
    assert first["step_sizes"] == pytest.approx([float(d.lrs[0]), float(d.lrs[3])])
    counts = {c: sum(f["class"] == c for f in side["files"]) for c in NAMES}
    for c in NAMES:
        assert len(list((out / c).glob("*.png"))) == counts[c]
    image, _ = folder[0]
    assert image.size == (8, 8)


def test_imagefolder_without_class_names_uses_indices(tmp_path):
    from torchvision.datasets import ImageFolder

    export_distilled(tiny_set(meta=False), "imagefolder", tmp_path)
    assert set(ImageFolder(str(tmp_path)).classes) <= {"0", "1", "2", "3"}


def test_text_export_of_an_image_set_is_a_one_line_error(tmp_path, run_dir):
    with pytest.raises(ValueError, match="needs a text distilled set"):
        export_distilled(run_dir, "text", tmp_path / "text")


def test_cli_export_exit_codes(tmp_path, run_dir, capsys):
    out = tmp_path / "cli"
    assert main(["export", str(run_dir), "--format", "npz", "--out", str(out)]) == 0
    assert (out / "distilled.npz").is_file()
    assert "wrote" in capsys.readouterr().out
    code = main(["export", str(run_dir), "--format", "png", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "png" in err
    assert not (tmp_path / "bad").exists()
    code = main(["export", str(tmp_path / "missing"), "--format", "npz", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
