"""The command line, end to end on the embedded digits data."""

from __future__ import annotations

import json

import pytest

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


def test_sigterm_checkpoints_and_resume_finishes_the_run(tmp_path):
    """A scheduler's (or `timeout`'s) SIGTERM stops `distill` like Ctrl-C: exit code 143 with a
    checkpoint on disk at an iteration boundary, and `--resume` completes the run."""
    import signal
    import subprocess
    import sys

    from safetensors import safe_open

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fastdistill.cli", "distill", "--preset", "digits-lenet-fixed-10",
           "--iterations", "60", "--out", str(out), "--quiet", "--device", "cpu",
           "--threads", "1", "--log-every", "1", "--checkpoint-every", "100000"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait until the run is inside its loop
        if line.startswith("iteration 2/"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "interrupted at iteration" in err and "resume with --resume" in err
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        state = json.loads(f.metadata()["state"])
    assert 2 <= state["iteration"] < 60
    resumed = main(["distill", "--preset", "digits-lenet-fixed-10", "--iterations", "60",
                    "--out", str(out), "--quiet", "--device", "cpu", "--resume"])  # fmt: skip
    assert resumed == 0
    assert json.loads((out / "report.json").read_text())["iterations"] == 60


@pytest.mark.parametrize("argv", [["presets"], ["distill"]])  # a finished and a failed command
def test_the_process_group_is_left_before_exit(argv, tmp_path, capsys):
    """Under torchrun the command leaves its process group itself: a rank exiting with gloo
    still up can abort in interpreter teardown while its peer finishes."""
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        main(argv)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
