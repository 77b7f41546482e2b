"""Shared figure plumbing: headless figures, PNG + PDF output, label helpers.

Figures are built on ``matplotlib.figure.Figure`` directly (rendered by Agg for PNG and the PDF
backend for PDF) instead of ``pyplot``, so nothing touches global backend state or needs a
display, and figures are freed as soon as they are saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from torch import Tensor

from fastdistill.distilled import DistilledSet

FORMATS: tuple[str, ...] = ("png", "pdf")


def new_figure(width: float, height: float, *, constrained: bool = True) -> Figure:
    """A figure of ``width`` x ``height`` inches, not registered with pyplot."""
    return Figure(figsize=(width, height), layout="constrained" if constrained else None)


def save_figure(
    fig: Figure, stem: str | Path, *, formats: Sequence[str] = FORMATS, dpi: int = 150
) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` (a given ``.png``/``.pdf`` suffix is dropped)."""
    stem = Path(stem)
    if stem.suffix.lower() in {f".{f}" for f in FORMATS}:
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(path, dpi=dpi, format=fmt)
        paths.append(path)
    return paths


def class_names_of(distilled: DistilledSet, class_names: Sequence[str] | None = None) -> list[str]:
    """Class names: given, else from the set's dataset description, else ``0..K-1``."""
    if class_names is not None:
        return [str(c) for c in class_names]
    names = distilled.meta.get("dataset", {}).get("class_names")
    if names:
        return [str(c) for c in names]
    k = 2 if distilled.label_kind == "binary" else distilled.labels.shape[-1]
    return [str(i) for i in range(k)]


def top_labels(row: Tensor, names: Sequence[str], top: int = 3) -> list[tuple[str, float]]:
    """The ``top`` largest entries of a label row as ``(class name, value)``, best first."""
    row = row.detach().double().reshape(-1).cpu()
    order = row.argsort(descending=True)[:top].tolist()
    return [(names[c] if c < len(names) else str(c), float(row[c])) for c in order]


def label_caption(row: Tensor, names: Sequence[str], top: int = 3, *, binary: bool) -> str:
    """Paper-style caption: top classes with their label values, or the scalar binary label."""
    if binary:
        return f"label {float(row.reshape(-1)[0]):+.2f}"
    return "\n".join(f"{n}: {v:.2f}" for n, v in top_labels(row, names, top))


def sample_names(steps: int, per_step: int) -> list[str]:
    """Row names of distilled samples: ``#k`` for one step, ``s<step> #<index>`` otherwise."""
    if steps == 1:
        return [f"#{i}" for i in range(per_step)]
    return [f"s{s} #{i}" for s in range(steps) for i in range(per_step)]
