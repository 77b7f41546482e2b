"""The full-data reference (validation, early stopping, warnings) and the controls of a set."""

from __future__ import annotations

import json

import pytest
import torch

from fastdistill.cli import main
from fastdistill.controls import with_hard_labels
from fastdistill.data import load_image_dataset
from fastdistill.distilled import DistilledSet
from fastdistill.full_data import (
    FullDataOptions,
    FullDataResult,
    majority_accuracy,
    train_full_data,
)
from fastdistill.models import MLP


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits")


def test_reference_keeps_the_best_validation_epoch(digits):
    full = train_full_data(MLP(1, 10, 8, hidden=(32,)), digits, epochs=6, lr=0.01, patience=None)
    assert [p["epoch"] for p in full.curve] == list(range(1, 7)) and full.epochs_run == 6
    vals = [p["validation_accuracy"] for p in full.curve]
    assert full.validation_accuracy == max(vals)
    assert full.best_epoch == vals.index(max(vals)) + 1
    assert full.test_accuracy > 0.85 and full.curve[-1]["train_loss"] < full.curve[0]["train_loss"]
    assert full.options["validation"] == 0.1


def test_reference_stops_when_validation_stalls(digits):
    # a step this small cannot move validation accuracy by a whole example for long
    full = train_full_data(MLP(1, 10, 8, hidden=(32,)), digits, epochs=50, lr=1e-7, patience=2)
    assert full.epochs_run < 50
    assert full.epochs_run - full.best_epoch == 2


def test_reference_without_validation_keeps_the_last_epoch(digits):
    full = train_full_data(MLP(1, 10, 8, hidden=(16,)), digits, epochs=2, validation=0.0)
    assert full.validation_accuracy is None and full.best_epoch == full.epochs_run == 2
    assert "validation_accuracy" not in full.curve[0]


def test_majority_uses_the_training_majority():
    train, test = torch.tensor([0, 0, 0, 1, 2]), torch.tensor([1, 1, 0, 2])
    assert majority_accuracy(train, test) == 0.25
    with pytest.raises(ValueError, match="empty"):
        majority_accuracy(torch.tensor([]), test)


@pytest.mark.parametrize(
    "full, majority, distilled, expect",
    [
        (0.2995, 0.286, 0.3555, ["majority class", "r = 118.7 > 100"]),
        (0.90, 0.10, 0.95, ["r = 105.6 > 100"]),
        (0.90, 0.10, 0.85, []),
        (0.30, 0.29, None, ["majority class"]),
    ],
)
def test_warnings_name_the_problem_and_the_fix(full, majority, distilled, expect):
    result = FullDataResult(full, None, 1, 1, majority)
    lines = result.warnings(distilled)
    assert len(lines) == len(expect)
    for line, want in zip(lines, expect):
        assert want in line and line.startswith("warning: ") and "\n" not in line
        assert "--full-data" in line


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"validation": 1.0}, "validation"),
        ({"patience": 0}, "patience"),
    ],
)
def test_options_reject_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        FullDataOptions(**bad)


@pytest.mark.parametrize("kind", ["soft", "softmax", "binary"])
def test_hard_labels_are_the_argmax_frozen(kind):
    d = DistilledSet.initialize(
        num_classes=2 if kind == "binary" else 4,
        sample_shape=(3,),
        steps=2,
        label_init="random",
        softmax_targets=kind == "softmax",
        binary=kind == "binary",
        generator=torch.Generator().manual_seed(0),
    )
    h = with_hard_labels(d)
    assert not h.learn_labels and torch.equal(h.data, d.data)
    assert torch.equal(h.raw_lrs, d.raw_lrs)
    if kind == "binary":
        assert h.label_kind == "binary" and torch.equal(h.labels, (d.labels > 0.5).float())
    else:
        assert h.label_kind == "soft" and torch.equal(h.labels.sum(-1), torch.ones(2, 4))
        assert torch.equal(h.labels.argmax(-1), d.labels.argmax(-1))


def test_distill_reports_controls_and_warns_on_a_weak_reference(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["distill", "--preset", "digits-lenet-fixed-10", "--iterations", "2", "--out",
            str(out), "--quiet", "--device", "cpu", "--full-data-epochs", "1",
            "--full-data-lr", "1e-9"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert set(report["controls"]) == {"hard_labels", "random_real"}
    assert report["controls"]["random_real"]["draws"] == 5
    assert "control, random real examples" in captured.out
    full = report["full_data"]
    assert full["options"]["lr"] == 1e-9 and len(full["curve"]) == full["epochs_run"] == 1
    # an untrained reference sits near chance: both lines reach the user
    assert any("majority class" in w for w in report["warnings"])
    assert "majority class" in captured.err
    out2 = tmp_path / "no-controls"
    argv2 = [*argv[:-4], "--no-controls"]
    argv2[argv2.index(str(out))] = str(out2)
    assert main(argv2) == 0
    assert "controls" not in json.loads((out2 / "report.json").read_text())
