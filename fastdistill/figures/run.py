"""``show_run``: every figure that applies to a saved ``fastdistill distill`` run directory."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from fastdistill.distilled import DistilledSet
from fastdistill.figures._common import class_names_of
from fastdistill.figures.curves import plot_training_curves
from fastdistill.figures.images import plot_distilled_images
from fastdistill.figures.labels import plot_label_table
from fastdistill.figures.metrics import plot_metrics
from fastdistill.figures.text import load_decoded, plot_decoded_text
from fastdistill.runlog import METRICS

DISTILLED = "distilled.safetensors"
REPORT = "report.json"


def load_run(run_dir: str | Path) -> tuple[DistilledSet, dict[str, Any] | None]:
    """The run's distilled set and its report (None when there is no ``report.json``).

    Raises FileNotFoundError for a missing folder or set, ValueError for unreadable files.
    """
    run = Path(run_dir)
    if not run.exists():
        raise FileNotFoundError(f"run directory not found: {run}")
    if not run.is_dir():
        raise FileNotFoundError(f"not a run directory: {run}")
    path = run / DISTILLED
    if not path.is_file():
        raise FileNotFoundError(
            f"{run} has no {DISTILLED}: not a finished `fastdistill distill` run "
            "(an interrupted run can be finished with `fastdistill distill --resume`)"
        )
    try:
        distilled = DistilledSet.load(path)
    except ValueError:
        raise
    except Exception as err:  # safetensors raises its own error type for corrupt files
        raise ValueError(f"cannot read {path}: {err}") from err
    report = None
    if (run / REPORT).is_file():
        try:
            report = json.loads((run / REPORT).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{run / REPORT} is not valid JSON: {err}") from err
        if not isinstance(report, dict):
            raise ValueError(f"{run / REPORT} does not hold a report object")
    return distilled, report


def _accuracy_text(report: dict[str, Any] | None) -> str:
    acc = (report or {}).get("test_accuracy") or {}
    if "mean" not in acc:
        return ""
    text = f"test accuracy {100 * acc['mean']:.2f}%"
    if acc.get("n_nets", 1) > 1:
        text += f" ± {100 * acc.get('std', 0.0):.2f} ({acc['n_nets']} nets)"
    return text


def _title(distilled: DistilledSet, report: dict[str, Any] | None) -> str:
    name = (report or {}).get("preset") or distilled.meta.get("dataset", {}).get("name", "")
    return " — ".join(p for p in (str(name), _accuracy_text(report)) if p)


def show_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Render the run's figures (PNG + PDF) into ``out_dir`` (default ``RUN_DIR/figures``):
    distilled samples per step, the label table, decoded sentences (text runs) and training
    curves (when ``report.json`` has a history) and the ``metrics.jsonl`` curves; a run still in
    progress (metrics but no set yet) gets its curves only. Returns the written paths."""
    run = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run / "figures"
    has_metrics = (run / METRICS).is_file()
    if has_metrics and not (run / DISTILLED).is_file():  # a run in progress: its curves only
        return plot_metrics(run / METRICS, out / "metrics", title=run.name)
    distilled, report = load_run(run)
    title = _title(distilled, report)
    names = class_names_of(distilled)
    paths = plot_distilled_images(distilled, out, title=title)
    paths += plot_label_table(distilled, out, title=f"learned labels — {title}" if title else None)
    if distilled.meta.get("dataset", {}).get("kind") == "text":
        sentences = load_decoded(run, distilled)
        if sentences:
            paths += plot_decoded_text(
                sentences,
                out,
                class_names=names,
                binary=distilled.label_kind == "binary",
                title=title or None,
            )
        else:
            warnings.warn(
                f"{run} has no decoded.json/decoded.txt: decoded text skipped", stacklevel=2
            )
    if has_metrics:
        paths += plot_metrics(run / METRICS, out / "metrics", title=title or None)
    if report is None:
        warnings.warn(f"{run} has no {REPORT}: training curves skipped", stacklevel=2)
    elif report.get("history"):
        acc = (report.get("test_accuracy") or {}).get("mean")
        paths += plot_training_curves(
            report["history"], out / "training", test_accuracy=acc, title=title or None
        )
    return paths
