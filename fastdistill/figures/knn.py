"""Decision regions of soft-label k-NN prototypes with label pie charts (paper Figures 3-4)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap, to_rgba

from fastdistill.figures._common import new_figure, save_figure
from fastdistill.prototypes import Prototypes, fit_prototypes, load_iris_2d


def class_colors(k: int) -> list[str]:
    """Red/green/blue for up to three classes (the paper's Iris colours), tab10 beyond."""
    base = ["tab:red", "tab:green", "tab:blue"] if k <= 3 else [f"C{i}" for i in range(10)]
    return [base[i % len(base)] for i in range(k)]


def draw_prototypes(
    ax: Axes,
    model: Prototypes,
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    resolution: int = 300,
    pie_radius: float | None = None,
) -> None:
    """Shade the predicted class over a grid, scatter the data and draw each prototype as a pie
    chart of its label distribution."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    k = model.labels.shape[1]
    colors = class_colors(k)
    lo, hi = (
        np.minimum(x.min(0), model.positions.numpy().min(0)),
        np.maximum(x.max(0), model.positions.numpy().max(0)),
    )
    pad = 0.12 * (hi - lo)
    gx, gy = np.meshgrid(
        np.linspace(lo[0] - pad[0], hi[0] + pad[0], resolution),
        np.linspace(lo[1] - pad[1], hi[1] + pad[1], resolution),
    )
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    pred = model.predict(grid).numpy().reshape(gx.shape)
    cmap = ListedColormap([to_rgba(c, 0.25) for c in colors])
    extent = (gx.min(), gx.max(), gy.min(), gy.max())
    # a raster, not a mesh: 90k quads would make the PDF slow to write and to open
    ax.imshow(
        pred,
        origin="lower",
        extent=extent,
        cmap=cmap,
        vmin=-0.5,
        vmax=k - 0.5,
        interpolation="nearest",
        aspect="auto",
    )
    for c in range(k):
        name = class_names[c] if class_names is not None else str(c)
        ax.scatter(*x[y == c].T, s=10, color=colors[c], edgecolor="k", lw=0.3, label=name)
    radius = pie_radius or 0.06 * float(max(hi - lo))
    for pos, dist in zip(model.positions.numpy(), model.label_distributions.numpy(), strict=True):
        _pie(ax, pos, dist, radius, colors)
    ax.set_xlim(gx.min(), gx.max())
    ax.set_ylim(gy.min(), gy.max())
    ax.set_aspect("equal")


def _pie(ax: Axes, center: np.ndarray, fractions: np.ndarray, radius: float, colors) -> None:
    """A pie chart in data coordinates, in an inset axes so the main axes keep their limits."""
    inset = ax.inset_axes(
        [center[0] - radius, center[1] - radius, 2 * radius, 2 * radius], transform=ax.transData
    )
    keep = fractions > 1e-3  # no sliver edges for classes a label does not hold
    inset.pie(
        fractions[keep],
        colors=[c for c, k in zip(colors, keep, strict=True) if k],
        wedgeprops={"edgecolor": "k", "linewidth": 0.6},
    )
    inset.set_aspect("equal")
    inset.set_axis_off()


def plot_prototypes(
    model: Prototypes,
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    out_path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    axis_labels: tuple[str, str] = ("feature 1", "feature 2"),
) -> list[Path]:
    """One decision-region plot of a fitted prototype model (paper Figure 4)."""
    fig = new_figure(5.0, 4.6)
    ax = fig.add_subplot()
    draw_prototypes(ax, model, x, y, class_names=class_names)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.legend(fontsize=8, loc="best")
    acc = model.accuracy(x, y)
    ax.set_title(
        title or f"{model.positions.shape[0]} soft-label prototypes: {100 * acc:.1f}%", fontsize=9
    )
    return save_figure(fig, out_path)


# The paper's four ways to get three points (Figure 3): which of position/labels are learned.
METHODS: dict[str, dict[str, bool]] = {
    "selection": {"learn_positions": False, "learn_labels": False},
    "generation": {"learn_positions": True, "learn_labels": False},
    "soft labels": {"learn_positions": False, "learn_labels": True},
    "combined": {"learn_positions": True, "learn_labels": True},
}


def iris_prototype_figures(
    out_dir: str | Path, *, features: str = "petal", seed: int = 0, steps: int = 500
) -> list[Path]:
    """Iris: two soft-label prototypes separating three classes (Figure 4), and three prototypes
    by selection / generation / soft labels / combined (Figure 3), each titled with accuracy."""
    x, y, names = load_iris_2d(features)  # type: ignore[arg-type]
    axis = (
        ("petal length (std.)", "petal width (std.)") if features == "petal" else ("PC 1", "PC 2")
    )
    out = Path(out_dir)
    two = fit_prototypes(x, y, 2, seed=seed, steps=steps)
    paths = plot_prototypes(
        two, x, y, out / "iris_prototypes_2", class_names=names, axis_labels=axis
    )
    fig = new_figure(4.0 * len(METHODS), 4.2)
    axes = fig.subplots(1, len(METHODS), squeeze=False)[0]
    for ax, (name, flags) in zip(axes, METHODS.items(), strict=True):
        model = fit_prototypes(x, y, 3, init="random_real", seed=seed, steps=steps, **flags)
        draw_prototypes(ax, model, x, y, class_names=names)
        ax.set_title(f"{name}: {100 * model.accuracy(x, y):.1f}%", fontsize=9)
        ax.set_xlabel(axis[0])
    axes[0].set_ylabel(axis[1])
    axes[0].legend(fontsize=7, loc="best")
    return paths + save_figure(fig, out / "iris_prototype_methods")
