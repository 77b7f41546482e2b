"""Grids of distilled samples, each titled with its top classes (paper Figures 1, 5, 7-10)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from torch import Tensor

from fastdistill.distilled import DistilledSet
from fastdistill.figures._common import class_names_of, label_caption, new_figure, save_figure


def denormalize(
    images: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> np.ndarray:
    """``[N, C, H, W]`` normalised images -> ``[N, H, W, C]`` in [0, 1] for display.

    With the dataset's ``mean``/``std`` the normalisation is undone and the result clamped (the
    usual way distilled images are shown); without them each image is min-max rescaled.
    """
    x = images.detach().double().cpu().numpy()
    if mean is not None and std is not None:
        c = x.shape[1]
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean/std need {c} values (one per channel), got {len(mean)}")
        x = x * np.asarray(std).reshape(1, c, 1, 1) + np.asarray(mean).reshape(1, c, 1, 1)
        x = np.clip(x, 0.0, 1.0)
    else:
        lo = x.min(axis=(1, 2, 3), keepdims=True)
        hi = x.max(axis=(1, 2, 3), keepdims=True)
        x = (x - lo) / np.maximum(hi - lo, 1e-12)
    return x.transpose(0, 2, 3, 1)


def _show_image(ax: Axes, img: np.ndarray) -> None:
    """Grayscale for one channel, RGB for three, the channel mean otherwise."""
    c = img.shape[-1]
    if c == 3:
        ax.imshow(img, interpolation="nearest")
    else:
        ax.imshow(
            img[..., 0] if c == 1 else img.mean(-1),
            cmap="gray",
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )


def _show_matrix(ax: Axes, mat: np.ndarray, vmax: float) -> None:
    """A text embedding ``[L, D]`` (or a feature vector) as a diverging heatmap (Figure 9)."""
    ax.imshow(mat, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")


def plot_distilled_images(
    distilled: DistilledSet,
    out_dir: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    top: int = 3,
    columns: int | None = None,
    stem: str = "images",
    title: str | None = None,
) -> list[Path]:
    """One grid per distilled step, ``stem_step<s>.png/.pdf``; every sample titled with its top
    ``top`` classes and label values (binary: its scalar label).

    Images ``[C, H, W]`` are un-normalised with ``mean``/``std`` (default: the set's
    ``meta["dataset"]``); text embeddings ``[L, D]`` are drawn as heatmaps.
    """
    names = class_names_of(distilled, class_names)
    ds = distilled.meta.get("dataset", {})
    mean = ds.get("mean") if mean is None else mean
    std = ds.get("std") if std is None else std
    S, N = distilled.data.shape[:2]
    sample_dim = distilled.data.dim() - 2
    binary = distilled.label_kind == "binary"
    vmax = float(distilled.data.detach().abs().max().clamp_min(1e-12))
    if columns is None:  # the paper lays 10 images out as 2 rows of 5
        columns = 5 if N <= 10 else 10
    cols = max(1, min(columns, N))
    rows = math.ceil(N / cols)
    width = len(str(S - 1))
    paths: list[Path] = []
    for s in range(S):
        cell_h = 1.9 if sample_dim == 3 else 2.2
        fig = new_figure(1.6 * cols + 0.2, cell_h * rows + 0.5)
        axes = fig.subplots(rows, cols, squeeze=False)
        images = denormalize(distilled.data[s], mean, std) if sample_dim == 3 else None
        for i, ax in enumerate(axes.flat):
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= N:
                ax.set_axis_off()
                continue
            if images is not None:
                _show_image(ax, images[i])
            else:
                mat = distilled.data[s, i].detach().double().cpu().numpy()
                _show_matrix(ax, mat.reshape(1, -1) if mat.ndim == 1 else mat, vmax)
            caption = label_caption(distilled.labels[s, i], names, top, binary=binary)
            ax.set_title(caption, fontsize=7, loc="left")
        heading = title or "distilled samples"
        fig.suptitle(f"{heading} — step {s} of {S}" if S > 1 else heading, fontsize=9)
        paths += save_figure(fig, Path(out_dir) / f"{stem}_step{s:0{width}d}")
    return paths
