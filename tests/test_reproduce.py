"""``fastdistill reproduce``: cells run, resume, estimate and assemble into a table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastdistill.cli import main
from fastdistill.evaluate import minimum_distilled_size
from fastdistill.reproduce import TABLES, RunOptions, get_table, run_table

FAST = {"iterations": 2, "eval_nets": 3}


def _options(**kw) -> RunOptions:
    return RunOptions(overrides=dict(FAST), log=lambda _: None, **kw)


def test_tables_cover_the_paper_rows():
    mnist = get_table("table2-mnist")
    keys = [c.key for c in mnist.cells]
    assert keys[:4] == ["sldd-fixed", "sldd-random", "dd-fixed", "dd-random"]
    assert {"random-real", "optimized-real", "kmeans", "average-real"} <= set(keys)
    assert {"knn-random-real", "knn-kmeans", "full-data"} <= set(keys)
    assert mnist.cell("sldd-fixed").paper == "98.6"
    assert mnist.cell("dd-random").config.label_mode == "hard"
    assert mnist.cell("sldd-random").config.init == "random"
    # 100 images: 10 steps of one image per class
    cfg = mnist.cell("sldd-fixed").config
    assert (cfg.steps, cfg.images_per_class, cfg.epochs) == (10, 1, 3)
    assert "table3-trec6" in TABLES and "figure6-mnist" in TABLES


def test_unknown_table_and_cell_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown table 'nope'"):
        get_table("nope")
    with pytest.raises(ValueError, match="no cell 'nope'"):
        run_table("tiny-digits", tmp_path, cells=["nope"], options=_options())


def test_tiny_table_runs_resumes_and_reports(tmp_path):
    table = run_table(
        "tiny-digits", tmp_path, cells=["sldd-fixed", "full-data"], options=_options()
    )
    cells = table["cells"]
    assert cells["sldd-fixed"]["status"] == "done"
    acc = cells["sldd-fixed"]["accuracy"]
    assert 0.0 <= acc["mean"] <= 1.0 and acc["n_nets"] == 1
    full = cells["full-data"]["accuracy"]["mean"]
    assert full > 0.5  # LeNet trained on all digits for a few epochs
    assert cells["sldd-fixed"]["distillation_ratio"] == pytest.approx(100 * acc["mean"] / full)
    assert cells["dd-random"]["status"] == "not run"
    assert (tmp_path / "sldd-fixed" / "distilled.safetensors").exists()
    md = (tmp_path / "table.md").read_text()
    assert "| fastdistill |" in md and "not run" in md
    assert json.loads((tmp_path / "table.json").read_text())["name"] == "tiny-digits"

    # finished cells are skipped: the result file is not rewritten
    result = tmp_path / "sldd-fixed" / "result.json"
    before = result.stat().st_mtime_ns
    logs: list[str] = []
    opts = _options()
    opts.log = logs.append
    run_table("tiny-digits", tmp_path, cells=["sldd-fixed"], options=opts)
    assert result.stat().st_mtime_ns == before
    assert any("skipped" in line for line in logs)


def test_random_init_cell_reports_mean_and_std(tmp_path):
    table = run_table("tiny-digits", tmp_path, cells=["dd-random"], options=_options())
    acc = table["cells"]["dd-random"]["accuracy"]
    assert acc["n_nets"] == 3 and acc["std"] >= 0.0
    assert "±" in table["cells"]["dd-random"]["ours"]


def test_interrupted_distillation_cell_resumes_from_its_checkpoint(tmp_path):
    from fastdistill.distiller import Distiller

    spec = get_table("tiny-digits")
    cell = spec.cell("sldd-fixed")
    folder = tmp_path / "sldd-fixed"
    folder.mkdir()
    # a run stopped after 2 of 4 iterations leaves a checkpoint and no result
    config = cell.config.replace(iterations=4, eval_nets=3)
    d = Distiller(config)
    d.fit(2, progress=False, checkpoint_path=folder / "checkpoint.safetensors")
    logs: list[str] = []
    opts = RunOptions(overrides={"iterations": 4, "eval_nets": 3}, log=logs.append)
    table = run_table("tiny-digits", tmp_path, cells=["sldd-fixed"], options=opts)
    assert any("resumed at iteration 2/4" in line for line in logs)
    result = json.loads((folder / "result.json").read_text())
    assert result["iterations"] == 4
    assert table["cells"]["sldd-fixed"]["status"] == "done"


def test_estimate_projects_wall_time_without_running(tmp_path):
    opts = RunOptions(overrides={"eval_nets": 3}, estimate=2, log=lambda _: None)
    table = run_table("tiny-digits", tmp_path, cells=["sldd-random"], options=opts)
    cell = table["cells"]["sldd-random"]
    assert cell["status"] == "estimated"
    result = json.loads((tmp_path / "sldd-random" / "result.json").read_text())
    assert result["iterations"] == 2 * 5  # 2 passes over 1,347 digits in batches of 256
    assert cell["estimated_distill_time_s"] == pytest.approx(
        cell["seconds_per_iteration"] * result["iterations"]
    )
    assert "est." in (tmp_path / "table.md").read_text()
    # an estimate does not count as done: a real run replaces it
    table = run_table("tiny-digits", tmp_path, cells=["sldd-random"], options=_options())
    assert table["cells"]["sldd-random"]["status"] == "done"


def test_minimum_distilled_size():
    accs = {1: 0.40, 2: 0.70, 5: 0.90, 10: 0.95}
    assert minimum_distilled_size(accs, 0.99, 90) == 5
    assert minimum_distilled_size(accs, 0.99, 70) == 2
    assert minimum_distilled_size(accs, 0.99, 99) is None
    with pytest.raises(ValueError, match="full-data accuracy must be positive"):
        minimum_distilled_size(accs, 0.0, 90)


def test_cli_lists_and_runs(tmp_path, capsys):
    assert main(["reproduce", "--list"]) == 0
    assert "table2-mnist" in capsys.readouterr().out
    out = tmp_path / "t"
    argv = ["reproduce", "tiny-digits", "--out", str(out), "--cells", "dd-fixed", "--quiet"]
    argv += ["--set", "iterations=2", "--eval-nets", "2", "--threads", "1"]
    assert main(argv) == 0
    assert "| fastdistill |" in capsys.readouterr().out
    assert json.loads((out / "dd-fixed" / "result.json").read_text())["status"] == "done"
    assert main(["reproduce", "tiny-digits", "--out", str(out), "--cells", "bogus"]) == 2


def test_baseline_cells_fill_the_table(tmp_path):
    keys = ["random-real", "optimized-real", "kmeans", "average-real"]
    keys += ["knn-random-real", "knn-kmeans", "full-data"]
    table = run_table("tiny-digits", tmp_path, cells=keys, options=_options())
    cells = table["cells"]
    for key in keys:
        assert cells[key]["status"] == "done", key
        assert 0.0 <= cells[key]["accuracy"]["mean"] <= 1.0
    # k-NN on k-means centroids of real digits is far above chance (10%)
    assert cells["knn-kmeans"]["accuracy"]["mean"] > 0.6
    assert "distillation_ratio" in cells["average-real"]


def test_size_sweep_reports_minimum_size_and_plots(tmp_path):
    table = run_table(
        "tiny-digits-sizes", tmp_path, cells=["m2", "m5", "full-data"], options=_options()
    )
    summary = table["accuracy_vs_size"]
    assert set(summary["accuracy"]) == {"2", "5"}
    assert set(summary["minimum_size"]) == {"80.0", "90.0", "95.0"}
    spec = get_table("tiny-digits-sizes")
    assert spec.cell("m2").config.classes_per_step == 2
    assert spec.cell("m20").config.steps == 2
    for path in table["figure"]:
        assert Path(path).stat().st_size > 0
    assert "minimum size with r_M >= 90%" in (tmp_path / "table.md").read_text()
