"""Reproduce a table of the paper: every cell it needs, resumable, beside the paper's numbers.

A table is a list of cells. Each cell is one distillation (SLDD/TDD with soft labels, DD with
hard labels; fixed or random init), one baseline (docs/algorithm.md §5) or the full-data accuracy that turns
accuracies into distillation ratios. Every cell runs in its own folder under the output folder
and leaves ``result.json`` there when done, so a table is

* resumable: finished cells are skipped, a distillation cell resumes exactly from its own
  checkpoint after an interruption;
* runnable piecemeal: ``cells=["sldd-fixed"]`` runs one cell (e.g. on a GPU machine) and the
  table is re-assembled from whatever cells exist;
* estimable: ``estimate=N`` times N outer iterations of each distillation cell and records the
  projected wall time instead of running it, for cells out of reach on the machine at hand.

The result is ``table.json`` (every cell: our number, the paper's, configuration, wall time)
and ``table.md`` (the paper's row beside ours, then the per-cell details).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from fastdistill.config import DistillConfig, get_preset

CellKind = Literal["distill", "baseline", "full-data"]
RESULT_FORMAT = "fastdistill.reproduce-cell/1"


@dataclass(frozen=True)
class Cell:
    """One number of a table.

    ``config`` fixes dataset, model, the distilled set's shape (steps, epochs, samples per
    class) and, for distillation cells, everything else. Baseline cells reuse the shape so
    they get the same number of samples and the same GD steps.
    """

    key: str
    column: str
    kind: CellKind
    config: DistillConfig
    paper: str | None = None
    baseline: str | None = None  # baseline name (kind == "baseline")
    init: Literal["fixed", "random"] = "random"  # init of nets trained on baseline sets


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    row: str  # the row label, e.g. "MNIST (LeNet)"
    cells: tuple[Cell, ...]
    notes: str = ""
    full_data_epochs: int = 10
    # accuracy-vs-size sweeps (Figure 6): cell key -> number of distilled samples
    sizes: tuple[tuple[str, int], ...] = ()
    # keyword arguments of ``run_baselines`` (draws, candidates, ...) beyond its defaults
    baseline_options: tuple[tuple[str, Any], ...] = ()

    def cell(self, key: str) -> Cell:
        for c in self.cells:
            if c.key == key:
                return c
        raise ValueError(
            f"table {self.name!r} has no cell {key!r}; cells: {[c.key for c in self.cells]}"
        )


# -- the tables ---------------------------------------------------------------------------------
BASELINE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("random-real", "rand. real"),
    ("optimized-real", "optim. real"),
    ("kmeans", "k-means"),
    ("average-real", "avg. real"),
    ("knn-random-real", "kNN rand. real"),
    ("knn-kmeans", "kNN k-means"),
)


def _table(
    name: str,
    title: str,
    row: str,
    base: DistillConfig,
    paper: dict[str, str],
    *,
    methods: Sequence[tuple[str, str, str]],
    notes: str = "",
    full_data_epochs: int = 10,
    baseline_options: tuple[tuple[str, Any], ...] = (),
) -> TableSpec:
    """Distillation cells (``methods``: key prefix, column prefix, label mode), both inits,
    then the six baselines and the full-data cell."""
    cells: list[Cell] = []
    for prefix, column, label_mode in methods:
        for init in ("fixed", "random"):
            cfg = base.replace(label_mode=label_mode, init=init)
            if init == "random":
                cfg = cfg.replace(nets_per_iteration=max(4, base.nets_per_iteration))
            key = f"{prefix}-{init}"
            cells.append(Cell(key, f"{column} {init}", "distill", cfg, paper.get(key)))
    for key, column in BASELINE_COLUMNS:
        cells.append(Cell(key, column, "baseline", base, paper.get(key), baseline=key))
    cells.append(Cell("full-data", "full data", "full-data", base, paper.get("full-data")))
    return TableSpec(
        name, title, row, tuple(cells), notes, full_data_epochs, baseline_options=baseline_options
    )


def _tables() -> dict[str, TableSpec]:
    # 400 passes halved every 100 for every cell, as the table was measured (the fixed-100
    # preset now trains 800; the random-init cells cost 4 nets per iteration)
    mnist = get_preset("mnist-lenet-fixed-100").config.replace(outer_epochs=400, decay_epochs=100)
    cifar = get_preset("cifar10-alexcifarnet-fixed-100").config
    image_methods = (("sldd", "SLDD", "soft"), ("dd", "DD", "hard"))
    text_methods = (("tdd", "TDD", "soft"),)
    # Table 3: TextConvNet, 10 GD steps of one sentence per class, 3 epochs, as the original
    # code's defaults; sentences padded/truncated as in the text presets. 100 passes with Adam
    # 0.01 halved every 30 ended at 75.4% (fixed init); 300 passes at 0.02 halved every 90,
    # keeping the best set on a 10% validation split: 81.0% (RESULTS.md; the paper: 79.2%).
    trec6 = DistillConfig(
        dataset="trec6",
        model="textconvnet",
        seq_len=30,
        images_per_class=1,
        steps=10,
        epochs=3,
        lr=0.02,
        outer_epochs=300,
        decay_epochs=90,
        validation=0.1,
        validate_every=50,
    )
    digits = get_preset("digits-lenet-fixed-10").config.replace(
        steps=2, epochs=2, validation=0.0, outer_epochs=2, eval_nets=4, full_data_epochs=5
    )
    tables = [
        _table(
            "table2-mnist",
            "Table 2, MNIST row: 100 distilled images (10 steps x 10, 3 epochs), LeNet",
            "MNIST (LeNet)",
            mnist,
            {
                "sldd-fixed": "98.6",
                "sldd-random": "82.7 ± 2.8",
                "dd-fixed": "96.6",
                "dd-random": "79.5 ± 8.1",
                "random-real": "68.6 ± 9.8",
                "optimized-real": "73.0 ± 7.6",
                "kmeans": "76.4 ± 9.5",
                "average-real": "77.1 ± 2.7",
                "knn-random-real": "71.5 ± 2.1",
                "knn-kmeans": "92.2 ± 0.1",
                "full-data": "~99",
            },
            methods=image_methods,
            full_data_epochs=10,
        ),
        _table(
            "table2-cifar10",
            "Table 2, CIFAR-10 row: 100 distilled images (10 steps x 10, 3 epochs), AlexCifarNet",
            "CIFAR-10 (AlexCifarNet)",
            cifar,
            {
                "sldd-fixed": "60.0",
                "sldd-random": "39.8 ± 0.8",
                "dd-fixed": "54.0",
                "dd-random": "36.8 ± 1.2",
                "random-real": "21.3 ± 1.5",
                "optimized-real": "23.4 ± 1.3",
                "kmeans": "22.5 ± 3.1",
                "average-real": "22.3 ± 0.3",
                "knn-random-real": "18.8 ± 1.3",
                "knn-kmeans": "29.4 ± 0.3",
                "full-data": "~80",
            },
            methods=image_methods,
            full_data_epochs=20,
        ),
        _table(
            "table3-trec6",
            "Table 3, TREC-6 row: TextConvNet, 10 GD steps of 6 sentences (one per class), "
            "3 epochs",
            "TREC-6 (TextConvNet)",
            trec6,
            {
                "tdd-fixed": "79.2",
                "tdd-random": "77.3 ± 2.9",
                "random-real": "37.5 ± 10.1",
                "optimized-real": "44.6 ± 7.5",
                "kmeans": "34.4 ± 13.0",
                "average-real": "28.0 ± 9.5",
                "knn-random-real": "31.5 ± 9.9",
                "knn-kmeans": "50.5 ± 6.8",
            },
            methods=text_methods,
            notes="50-d GloVe 6B (the paper: 100-d).",
            full_data_epochs=10,
        ),
        _table(
            "tiny-digits",
            "A smoke test of the machinery: sklearn digits, LeNet, 2 steps x 10 images, "
            "2 epochs, a few iterations (no paper numbers)",
            "digits (LeNet)",
            digits,
            {},
            methods=image_methods,
            full_data_epochs=1,
            baseline_options=(
                ("draws", 2),
                ("candidates", 5),
                ("score_nets", 2),
                ("score_samples", 256),
                ("lr_grid", (0.01, 0.1)),
            ),
        ),
    ]
    tables.append(
        _size_sweep(
            "figure6-mnist",
            "Figure 6: MNIST LeNet fixed-init accuracy vs number of soft-label distilled images",
            "MNIST (LeNet), fixed init",
            mnist,
            (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 50, 100),
            {5: "91.56", 10: "96.13", 100: "98.6", 0: "~99"},
            notes="The paper reads the 90% distillation size off this curve: d_90 = 5.",
        )
    )
    tables.append(
        _size_sweep(
            "tiny-digits-sizes",
            "A smoke test of the size sweep: sklearn digits, LeNet, M = 2, 5, 20",
            "digits (LeNet), fixed init",
            digits,
            (2, 5, 20),
            {},
            full_data_epochs=1,
        )
    )
    return {t.name: t for t in tables}


def _size_sweep(
    name: str,
    title: str,
    row: str,
    base: DistillConfig,
    sizes: Sequence[int],
    paper: dict[int, str],
    *,
    classes: int = 10,
    notes: str = "",
    full_data_epochs: int = 10,
) -> TableSpec:
    """Accuracy vs number of distilled samples M (Figure 6), soft labels, the base's init.
    M <= classes uses one step with M classes (fewer samples than classes), larger M uses
    M // classes steps of one sample per class; E stays the base's."""
    cells, keyed = [], []
    for m in sizes:
        if m <= classes:
            cfg = base.replace(steps=1, classes_per_step=m, images_per_class=1)
        else:
            cfg = base.replace(steps=m // classes, classes_per_step=None, images_per_class=1)
        key = f"m{m}"
        cells.append(Cell(key, f"M={m}", "distill", cfg, paper.get(m)))
        keyed.append((key, m))
    cells.append(Cell("full-data", "full data", "full-data", base, paper.get(0)))
    return TableSpec(name, title, row, tuple(cells), notes, full_data_epochs, sizes=tuple(keyed))


TABLES: dict[str, TableSpec] = _tables()


def get_table(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise ValueError(f"unknown table {name!r}; choose one of {sorted(TABLES)}") from None


# -- running cells ------------------------------------------------------------------------------
@dataclass
class RunOptions:
    """How to run a table's cells (none of this changes what a cell means except overrides)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    data_root: str | Path | None = None
    download: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)  # applied to every cell's config
    eval_nets: int | None = None
    estimate: int = 0  # > 0: time this many iterations per distillation cell, project the rest
    progress: bool = False
    log: Callable[[str], None] = print


def run_table(
    name: str, out: str | Path, *, cells: Iterable[str] | None = None, options: RunOptions
) -> dict[str, Any]:
    """Run the (selected) cells of a table that have no result yet, then write the table."""
    spec = get_table(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    selected = [spec.cell(k) for k in cells] if cells is not None else list(spec.cells)
    for cell in selected:
        folder = out / cell.key
        done = _read_result(folder)
        if done is not None and (done["status"] == "done" or options.estimate):
            options.log(f"[{cell.key}] already {done['status']}, skipped")
            continue
        options.log(f"[{cell.key}] {cell.column}: running")
        result = run_cell(spec, cell, folder, options)
        _write_json(folder / "result.json", result)
        options.log(f"[{cell.key}] {_format_result(result)} ({result['wall_time_s']:.0f}s)")
    return write_table(spec, out)


def cell_config(spec: TableSpec, cell: Cell, options: RunOptions) -> DistillConfig:
    cfg = cell.config.replace(**options.overrides) if options.overrides else cell.config
    if options.eval_nets is not None:
        cfg = cfg.replace(eval_nets=options.eval_nets)
    return cfg


def run_cell(spec: TableSpec, cell: Cell, folder: Path, options: RunOptions) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    config = cell_config(spec, cell, options)
    start = time.perf_counter()
    if cell.kind == "distill":
        body = _run_distill(config, folder, options)
    elif cell.kind == "baseline":
        body = _run_baseline(cell, config, options, dict(spec.baseline_options))
    else:
        body = _run_full_data(spec, config, options)
    return {
        "format": RESULT_FORMAT,
        "table": spec.name,
        "cell": cell.key,
        "column": cell.column,
        "kind": cell.kind,
        "paper": cell.paper,
        "config": config.to_dict(),
        "device": str(options.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "wall_time_s": time.perf_counter() - start,
        **body,
    }


def _run_distill(config: DistillConfig, folder: Path, options: RunOptions) -> dict[str, Any]:
    from fastdistill.distiller import Distiller

    distiller = Distiller(
        config, device=options.device, data_root=options.data_root, download=options.download
    )
    total = distiller.total_iterations
    if options.estimate:
        n = min(options.estimate, total)
        distiller.fit(n, progress=options.progress)
        per_it = distiller.wall_time / max(1, n)
        return {
            "status": "estimated",
            "iterations": total,
            "seconds_per_iteration": per_it,
            "estimated_distill_time_s": per_it * total,
        }
    ckpt = folder / "checkpoint.safetensors"
    if ckpt.exists():
        distiller.load_checkpoint(ckpt)
        options.log(f"  resumed at iteration {distiller.iteration}/{total}")
    distiller.fit(progress=options.progress, checkpoint_path=ckpt)
    distiller.distilled.save(folder / "distilled.safetensors")
    t0 = time.perf_counter()
    acc = distiller.evaluate()
    return {
        "status": "done",
        "accuracy": acc.to_dict(),
        "iterations": distiller.iteration,
        "distill_time_s": distiller.wall_time,
        "seconds_per_iteration": distiller.wall_time / max(1, distiller.iteration),
        "skipped_iterations": distiller.skipped,
        "evaluation_time_s": time.perf_counter() - t0,
        "history": distiller.history,
    }


def _load_data(config: DistillConfig, options: RunOptions):
    from fastdistill.data import load_dataset

    data = load_dataset(
        config.dataset, options.data_root, download=options.download, **config.data_kwargs()
    )
    return data.to(options.device)


def _run_baseline(
    cell: Cell, config: DistillConfig, options: RunOptions, extra: dict[str, Any]
) -> dict[str, Any]:
    from fastdistill.baselines import run_baselines
    from fastdistill.models import build_model_for

    data = _load_data(config, options)
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    module = build_model_for(config.model, data, **config.model_kwargs).to(options.device, dtype)
    gen = torch.Generator().manual_seed(config.seed)
    name = cell.baseline.replace("-", "_")
    results = run_baselines(
        data,
        module,
        names=[name],
        per_class=config.images_per_class,
        classes_per_step=config.classes_per_step,
        steps=config.steps,
        epochs=config.epochs,
        init=cell.init,
        n_nets=config.eval_nets,
        scheme=config.init_scheme,
        gain=config.init_gain,
        generator=gen,
        **extra,
    )
    acc = results[name].to_dict()
    return {"status": "done", "accuracy": acc}


def _run_full_data(spec: TableSpec, config: DistillConfig, options: RunOptions) -> dict[str, Any]:
    from fastdistill.full_data import options_from_config, train_full_data
    from fastdistill.models import build_model_for

    data = _load_data(config, options)
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    module = build_model_for(config.model, data, **config.model_kwargs).to(options.device, dtype)
    epochs = config.full_data_epochs or spec.full_data_epochs
    opts = options_from_config(config, epochs)
    full = train_full_data(module, data, opts, seed=config.seed, scheme=config.init_scheme)
    for line in full.warnings():
        print(line, file=sys.stderr)
    return {
        "status": "done",
        "accuracy": {"mean": full.test_accuracy, "std": 0.0, "n_nets": 1},
        "epochs": epochs,
        "full_data": full.to_dict(),
    }


# -- the table ----------------------------------------------------------------------------------
def _read_result(folder: Path) -> dict[str, Any] | None:
    path = folder / "result.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    if result.get("format") != RESULT_FORMAT:
        raise ValueError(f"{path} is not a fastdistill reproduction result")
    return result


def _write_json(path: Path, obj: Any) -> None:
    """Atomic: an interrupted write never leaves a half result that would be skipped."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def _format_accuracy(acc: dict[str, Any]) -> str:
    mean = 100 * acc["mean"]
    return f"{mean:.1f} ± {100 * acc['std']:.1f}" if acc.get("n_nets", 1) > 1 else f"{mean:.1f}"


def _format_result(result: dict[str, Any] | None) -> str:
    if result is None:
        return "not run"
    if result["status"] == "estimated":
        return f"est. {_format_duration(result['estimated_distill_time_s'])}"
    return _format_accuracy(result["accuracy"])


def _format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def write_table(spec: TableSpec, out: Path) -> dict[str, Any]:
    """Assemble ``table.json`` and ``table.md`` from the cells that have results."""
    results = {c.key: _read_result(out / c.key) for c in spec.cells}
    full = results.get("full-data")
    full_acc = full["accuracy"]["mean"] if full and full["status"] == "done" else None
    cells = {}
    for c in spec.cells:
        r = results[c.key]
        entry: dict[str, Any] = {"column": c.column, "kind": c.kind, "paper": c.paper}
        if r is not None:
            entry.update(
                status=r["status"],
                ours=_format_result(r),
                wall_time_s=r["wall_time_s"],
                config=r["config"],
                device=r["device"],
            )
            if "epochs" in r:
                entry["epochs"] = r["epochs"]
            if r["status"] == "done":
                entry["accuracy"] = r["accuracy"]
                if full_acc and c.kind != "full-data" and not math.isnan(full_acc):
                    entry["distillation_ratio"] = 100 * r["accuracy"]["mean"] / full_acc
            else:
                entry["estimated_distill_time_s"] = r["estimated_distill_time_s"]
                entry["seconds_per_iteration"] = r["seconds_per_iteration"]
        else:
            entry["status"] = "not run"
        cells[c.key] = entry
    table = {"name": spec.name, "title": spec.title, "row": spec.row, "cells": cells}
    warnings = _ratio_warnings(cells, full)
    if warnings:
        table["warnings"] = warnings
        for line in warnings:
            print(line, file=sys.stderr)
    if spec.sizes:
        table["accuracy_vs_size"] = summary = _size_summary(spec, cells, full_acc)
        if summary["accuracy"]:
            table["figure"] = [str(p) for p in _plot_sizes(spec, summary, out)]
    if spec.notes:
        table["notes"] = spec.notes
    _write_json(out / "table.json", table)
    (out / "table.md").write_text(render_markdown(spec, table))
    return table


def _ratio_warnings(cells: dict[str, Any], full: dict[str, Any] | None) -> list[str]:
    """Why the table's ratios should not be trusted: an undertrained full-data reference."""
    from fastdistill.full_data import FullDataResult

    out = []
    if full and full["status"] == "done" and "full_data" in full:
        out += FullDataResult(**full["full_data"]).warnings()
    over = [
        f"{k} ({e['distillation_ratio']:.1f})"
        for k, e in cells.items()
        if e.get("distillation_ratio", 0) > 100
    ]
    if over:
        out.append(
            f"warning: r > 100 for {', '.join(over)}: these beat the full-data reference, so it "
            "is undertrained; rerun the full-data cell longer (--set full_data_epochs=...) or with "
            "another full_data_lr"
        )
    return out


def _size_summary(spec: TableSpec, cells: dict[str, Any], full_acc: float | None) -> dict[str, Any]:
    """Accuracy per number of distilled samples and the minimum sizes reaching 80/90/95%."""
    from fastdistill.evaluate import minimum_distilled_size

    accs = {m: cells[k]["accuracy"]["mean"] for k, m in spec.sizes if "accuracy" in cells[k]}
    summary: dict[str, Any] = {"accuracy": {str(m): a for m, a in sorted(accs.items())}}
    if full_acc:
        summary["full_data_accuracy"] = full_acc
        summary["minimum_size"] = {
            str(a): minimum_distilled_size(accs, full_acc, a) for a in (80.0, 90.0, 95.0)
        }
    return summary


def _plot_sizes(spec: TableSpec, summary: dict[str, Any], out: Path) -> list[Path]:
    from fastdistill.figures import plot_accuracy_vs_samples

    points = [(int(m), a, None) for m, a in summary["accuracy"].items()]
    return plot_accuracy_vs_samples(
        {"fastdistill (soft labels)": points},
        out / "accuracy_vs_size",
        full_data=summary.get("full_data_accuracy"),
        title=spec.title,
    )


def render_markdown(spec: TableSpec, table: dict[str, Any]) -> str:
    cells = table["cells"]
    keys = [c.key for c in spec.cells]
    head = "| | " + " | ".join(cells[k]["column"] for k in keys) + " |"
    rule = "| --- " * (len(keys) + 1) + "|"
    paper = "| paper | " + " | ".join(cells[k]["paper"] or "" for k in keys) + " |"
    ours = "| fastdistill | " + " | ".join(cells[k].get("ours", "not run") for k in keys) + " |"
    note = f"Row: {spec.row}. Accuracies in %, random init as mean ± unbiased std over nets."
    lines = [f"# {spec.title}", "", note, "", head, rule, paper, ours, ""]
    if spec.notes:
        lines += [spec.notes, ""]
    lines += [f"**{w}**" for w in table.get("warnings", [])]
    lines += [
        "| cell | kind | ours | paper | r_M | wall time | device | configuration |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k in keys:
        e = cells[k]
        ratio = f"{e['distillation_ratio']:.1f}" if "distillation_ratio" in e else ""
        wall = _format_duration(e["wall_time_s"]) if "wall_time_s" in e else ""
        cfg = _config_summary(e["config"], e["kind"], e.get("epochs")) if "config" in e else ""
        lines.append(
            f"| {k} | {e['kind']} | {e.get('ours', 'not run')} | {e['paper'] or ''} | {ratio} | "
            f"{wall} | {e.get('device', '')} | {cfg} |"
        )
    if "accuracy_vs_size" in table:
        summary = table["accuracy_vs_size"]
        lines += ["", "Accuracy vs number of distilled samples (%):", ""]
        lines += [f"- M={m}: {100 * a:.2f}" for m, a in summary["accuracy"].items()]
        for a, m in summary.get("minimum_size", {}).items():
            reached = f"M = {m}" if m is not None else "not reached by the sizes run"
            lines.append(f"- minimum size with r_M >= {float(a):.0f}%: {reached}")
    return "\n".join(lines) + "\n"


def _config_summary(cfg: dict[str, Any], kind: str = "distill", epochs: int | None = None) -> str:
    what = f"{cfg['dataset']}/{cfg['model']}"
    shape = f"S={cfg['steps']} E={cfg['epochs']} ipc={cfg['images_per_class']}"
    if kind == "full-data":
        return f"{what}, all training data, {epochs} epochs (Adam)"
    if kind == "baseline":
        return f"{what}, same samples and GD steps ({shape})"
    parts = [what, f"{cfg['init']} init", f"{cfg['label_mode']} labels", shape]
    if cfg.get("iterations") is not None:
        parts.append(f"{cfg['iterations']} it")
    else:
        parts.append(f"{cfg['outer_epochs']} passes")
    return ", ".join(parts)
