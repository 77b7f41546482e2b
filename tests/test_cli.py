"""The command line, end to end on the embedded digits data."""

from __future__ import annotations

import json

from fastdistill.cli import main
from fastdistill.distilled import DistilledSet


def test_presets_lists_the_paper_rows(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in (
        "digits-lenet-fixed-10",
        "mnist-lenet-fixed-10",
        "mnist-lenet-fixed-5",
        "mnist-lenet-random-100",
        "cifar10-alexcifarnet-fixed-100",
        "cifar10-alexcifarnet-random-100",
        "mnist-lenet-fixed-10-hard",
    ):
        assert name in out


def test_distill_writes_set_and_report(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "distill",
            "--preset",
            "digits-lenet-fixed-10",
            "--iterations",
            "3",
            "--seed",
            "1",
            "--out",
            str(out),
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    acc = report["test_accuracy"]
    assert set(acc) == {"mean", "std", "n_nets"} and 0.0 <= acc["mean"] <= 1.0
    assert acc["n_nets"] == 1 and report["config"]["seed"] == 1 and report["iterations"] == 3
    d = DistilledSet.load(out / "distilled.safetensors")
    assert d.data.shape == (1, 10, 1, 28, 28) and d.init_weights is not None
    assert main(["evaluate", str(out), "--device", "cpu"]) == 0
    assert '"test_accuracy"' in capsys.readouterr().out


def test_unknown_preset_is_a_clear_error(tmp_path, capsys):
    assert main(["distill", "--preset", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
