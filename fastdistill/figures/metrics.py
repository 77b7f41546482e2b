"""``plot_metrics``: the curves of a run's ``metrics.jsonl`` (``fastdistill show RUN``)."""

from __future__ import annotations

from pathlib import Path

from fastdistill.figures._common import new_figure, save_figure
from fastdistill.runlog import read_metrics


def plot_metrics(path: str | Path, out_path: str | Path, *, title: str | None = None) -> list[Path]:
    """Outer loss (raw and smoothed), the outer learning rate and the learned inner step sizes,
    and validation accuracy (when logged) against the iteration; PNG + PDF at ``out_path``."""
    rows = read_metrics(path)
    if not rows:
        raise ValueError(f"{path} has no rows to plot yet")
    it = [r["iteration"] for r in rows]
    val = [(r["iteration"], r["val_accuracy"]) for r in rows if r.get("val_accuracy") is not None]
    panels = 3 if val else 2
    fig = new_figure(4.6 * panels, 3.4)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    ax = axes[0]
    ax.plot(it, [r["outer_loss"] for r in rows], lw=0.8, alpha=0.6, label="outer loss")
    if all(r.get("smoothed_loss") is not None for r in rows):
        ax.plot(it, [r["smoothed_loss"] for r in rows], lw=1.5, label="smoothed")
    ax.set_xlabel("outer iteration")
    ax.set_ylabel("outer loss")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(it, [r["lr"] for r in rows], color="k", lw=1.5, label="outer lr (Adam)")
    inner = [r.get("inner_lrs") or [] for r in rows]
    T = min(len(x) for x in inner)
    for t in range(T):
        ax.plot(it, [x[t] for x in inner], lw=0.8, alpha=0.7, label=f"step {t}" if T <= 6 else None)
    ax.set_yscale("log")
    ax.set_xlabel("outer iteration")
    ax.set_ylabel("learning rate")
    ax.legend(fontsize=7)
    if val:
        ax = axes[2]
        ax.plot([v[0] for v in val], [100 * v[1] for v in val], marker="o", ms=3)
        ax.set_xlabel("outer iteration")
        ax.set_ylabel("validation accuracy (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, out_path)
