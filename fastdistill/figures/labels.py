"""The full table of learned labels (paper Table 1): samples x classes, values annotated."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import TwoSlopeNorm

from fastdistill.distilled import DistilledSet
from fastdistill.figures._common import class_names_of, new_figure, sample_names, save_figure

MAX_ANNOTATED_CELLS = 1200  # beyond this, numbers are unreadable: colour only
MAX_TICKED_ROWS = 100


def label_matrix(distilled: DistilledSet) -> np.ndarray:
    """Label values ``[S*N, K]`` (``[S*N, 1]`` for binary sets), in sample order."""
    labels = distilled.labels.detach().double().cpu().numpy()
    S, N = labels.shape[:2]
    return labels.reshape(S * N, -1)


def plot_label_table(
    distilled: DistilledSet,
    out_dir: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    stem: str = "labels",
    title: str | None = None,
) -> list[Path]:
    """Heatmap of every label value, rows = distilled samples, columns = classes.

    Values are written in the cells (the largest of each row in bold, as the paper bolds the top
    class) when the table is small enough to read; the colour scale is centred on zero because
    negative label values matter as much as positive ones.
    """
    values = label_matrix(distilled)
    binary = distilled.label_kind == "binary"
    names = ["label"] if binary else class_names_of(distilled, class_names)
    rows, cols = values.shape
    S, N = distilled.labels.shape[:2]
    annotate = rows * cols <= MAX_ANNOTATED_CELLS
    # cells big enough for their numbers when annotated, else small colour patches
    width = min(24.0, max(4.0, 1.6 + (0.62 if annotate else 0.16) * cols))
    height = min(24.0, max(2.2, 1.0 + (0.26 if annotate else 0.12) * rows))
    fig = new_figure(width, height)
    ax = fig.add_subplot()
    vmax = max(float(np.abs(values).max()), 1e-6)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)
    im = ax.imshow(values, cmap="RdBu_r", norm=norm, aspect="auto", interpolation="nearest")
    ax.set_xticks(
        range(cols), names, rotation=90 if cols > 12 else 0, fontsize=8 if annotate else 6
    )
    ax.xaxis.tick_top()
    if rows <= MAX_TICKED_ROWS:
        ax.set_yticks(range(rows), sample_names(S, N), fontsize=7 if annotate else 5)
    ax.set_ylabel("distilled sample")
    if annotate:
        _annotate(ax, values, vmax, bold_max=not binary)
    fig.colorbar(im, ax=ax, shrink=0.8, label="label value")
    ax.set_title(title or "learned labels", fontsize=9)
    return save_figure(fig, Path(out_dir) / stem)


def _annotate(ax, values: np.ndarray, vmax: float, *, bold_max: bool) -> None:
    """Write each value in its cell; white text on strong colours, the row maximum in bold."""
    top = values.argmax(axis=1)
    for r, row in enumerate(values):
        for c, v in enumerate(row):
            ax.text(
                c,
                r,
                f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=6.5,
                color="white" if abs(v) > 0.6 * vmax else "black",
                fontweight="bold" if bold_max and c == top[r] else "normal",
            )
