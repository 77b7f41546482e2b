"""Line plots: accuracy vs distilled-set size (paper Figure 6) and training curves."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.ticker import ScalarFormatter

from fastdistill.figures._common import new_figure, save_figure

# one point: (number of distilled samples, mean accuracy, std) — std may be omitted or None
Point = Sequence[float | None]


def _points(name: str, points: Sequence[Point]) -> np.ndarray:
    """Validate one series into an ``[n, 3]`` array sorted by size (missing std -> 0)."""
    rows = []
    for p in points:
        if len(p) not in (2, 3):
            raise ValueError(f"series {name!r}: points are (num_samples, mean[, std]), got {p!r}")
        n, mean = p[0], p[1]
        std = p[2] if len(p) == 3 and p[2] is not None else 0.0
        if n is None or mean is None or not (n > 0 and math.isfinite(mean) and std >= 0):
            raise ValueError(f"series {name!r}: invalid point {p!r}")
        if not 0.0 <= mean <= 1.0:
            raise ValueError(
                f"series {name!r}: accuracy {mean} is not a fraction in [0, 1] "
                "(pass accuracies as fractions, e.g. 0.96, not 96)"
            )
        rows.append((float(n), float(mean), float(std)))
    if not rows:
        raise ValueError(f"series {name!r} is empty")
    return np.array(sorted(rows))


def plot_accuracy_vs_samples(
    series: Mapping[str, Sequence[Point]],
    out_path: str | Path,
    *,
    full_data: float | None = None,
    full_data_label: str = "full data",
    title: str | None = None,
    xlabel: str = "number of distilled samples",
    log_x: bool | None = None,
) -> list[Path]:
    """Test accuracy (in %) against distilled-set size, one line per method with a ±std band,
    and an optional dashed full-data line. ``log_x`` defaults to on when sizes span 20x."""
    if not series:
        raise ValueError("no series to plot")
    data = {name: _points(name, pts) for name, pts in series.items()}
    if full_data is not None and not 0.0 <= full_data <= 1.0:
        raise ValueError(f"full_data accuracy {full_data} is not a fraction in [0, 1]")
    fig = new_figure(5.5, 3.8)
    ax = fig.add_subplot()
    for name, arr in data.items():
        n, m, s = arr[:, 0], 100 * arr[:, 1], 100 * arr[:, 2]
        line = ax.plot(n, m, marker="o", ms=4, label=name)[0]
        if s.any():
            ax.fill_between(n, m - s, m + s, color=line.get_color(), alpha=0.2, lw=0)
    if full_data is not None:
        ax.axhline(100 * full_data, color="0.3", ls="--", lw=1, label=full_data_label)
    sizes = np.concatenate([a[:, 0] for a in data.values()])
    if log_x if log_x is not None else sizes.max() / sizes.min() >= 20:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 1, 10, 100 rather than 10^0, ...
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, out_path)


def plot_training_curves(
    history: Sequence[Mapping[str, float]],
    out_path: str | Path,
    *,
    test_accuracy: float | None = None,
    title: str | None = None,
) -> list[Path]:
    """Outer loss (raw and smoothed) and every ``*accuracy`` entry of a run's history against the
    outer iteration; ``test_accuracy`` (final) is drawn as a dashed line on the accuracy panel."""
    loss_rows = [h for h in history if "outer_loss" in h]
    acc_keys = sorted({k for h in history for k in h if k.endswith("accuracy")})
    if not loss_rows and not acc_keys:
        raise ValueError("history has no outer_loss or accuracy entries to plot")
    panels = int(bool(loss_rows)) + int(bool(acc_keys or test_accuracy is not None))
    fig = new_figure(5.0 * panels, 3.4)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    if loss_rows:
        _loss_panel(axes[0], loss_rows)
    if panels == 2 or not loss_rows:
        _accuracy_panel(axes[-1], history, acc_keys, test_accuracy)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, out_path)


def _loss_panel(ax, rows: Sequence[Mapping[str, float]]) -> None:
    it = [r.get("iteration", i) for i, r in enumerate(rows)]
    ax.plot(it, [r["outer_loss"] for r in rows], marker=".", lw=0.8, alpha=0.6, label="outer loss")
    if all("smoothed_loss" in r for r in rows):
        ax.plot(it, [r["smoothed_loss"] for r in rows], marker=".", lw=1.5, label="smoothed")
    ax.set_xlabel("outer iteration")
    ax.set_ylabel("outer loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _accuracy_panel(
    ax, history: Sequence[Mapping[str, float]], keys: Sequence[str], test: float | None
) -> None:
    for key in keys:
        rows = [h for h in history if key in h and h[key] is not None]
        it = [r.get("iteration", i) for i, r in enumerate(rows)]
        ax.plot(it, [100 * r[key] for r in rows], marker="o", ms=4, label=key.replace("_", " "))
    if test is not None:
        ax.axhline(100 * test, color="0.3", ls="--", lw=1, label="final test accuracy")
    ax.set_xlabel("outer iteration")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
