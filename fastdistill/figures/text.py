"""Decoded distilled sentences with their label rows (paper Tables 6 and 7)."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

from fastdistill.decode import DecodedSentence
from fastdistill.distilled import DistilledSet
from fastdistill.figures._common import new_figure, save_figure, top_labels

_TXT_LINE = re.compile(r"^\[step (\d+) #(\d+)\] \((.*?)\)  ?(.*)$")
MAX_LABEL_COLUMNS = 10  # more classes than this: one "top classes" column instead
LINE_H = 0.14  # inches per text line at font size 8 (line spacing 1.25)
CHAR_W = 0.062  # inches per character, roughly, at font size 8


def load_decoded(
    run_dir: str | Path, distilled: DistilledSet | None = None
) -> list[DecodedSentence] | None:
    """The decoded sentences of a run: ``decoded.json`` (full label rows), else ``decoded.txt``
    with label rows taken from ``distilled``; None when the run has neither file."""
    run = Path(run_dir)
    js, txt = run / "decoded.json", run / "decoded.txt"
    if js.is_file():
        try:
            rows = json.loads(js.read_text(encoding="utf-8"))
            return [
                DecodedSentence(
                    int(r["step"]),
                    int(r["index"]),
                    str(r["text"]),
                    [float(v) for v in r["label"]],
                    [(str(n), float(v)) for n, v in r.get("top_classes", [])],
                )
                for r in rows
            ]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{js} is not a decoded-sentence file: {err}") from err
    if txt.is_file():
        return _parse_decoded_txt(txt, distilled)
    return None


def _parse_decoded_txt(path: Path, distilled: DistilledSet | None) -> list[DecodedSentence]:
    """Parse ``[step s #i] (labels)  text`` lines; full label rows come from the set."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = _TXT_LINE.match(line)
        if m is None:
            raise ValueError(f"{path}:{n}: not a decoded-sentence line: {line[:60]!r}")
        s, i = int(m.group(1)), int(m.group(2))
        label: list[float] = []
        if distilled is not None:
            if s >= distilled.labels.shape[0] or i >= distilled.labels.shape[1]:
                raise ValueError(f"{path}:{n}: step {s} #{i} is not in the distilled set")
            label = distilled.labels[s, i].detach().double().reshape(-1).tolist()
        out.append(DecodedSentence(s, i, m.group(4), label, []))
    return out


def _wrap(text: str, max_words: int, width: int) -> list[str]:
    words = text.split()
    shown = " ".join(words[:max_words]) + (" …" if len(words) > max_words else "")
    return textwrap.wrap(shown, width=width) or ["(empty)"]


def plot_decoded_text(
    sentences: Sequence[DecodedSentence],
    out_dir: str | Path,
    *,
    class_names: Sequence[str],
    binary: bool = False,
    stem: str = "decoded",
    max_words: int = 200,
    max_sentences: int = 30,
    wrap: int = 70,
    title: str | None = None,
) -> list[Path]:
    """A table: each decoded sentence (first ``max_words`` words, as Table 7 shows the first
    200) next to its label values, the top class in bold; binary sets get one label column.

    With many classes the label cells list the top three classes instead of all values.
    """
    if not sentences:
        raise ValueError("no decoded sentences to plot")
    shown = list(sentences[:max_sentences])
    names = ["label"] if binary else [str(c) for c in class_names]
    full = len(names) <= MAX_LABEL_COLUMNS
    label_cols = names if full else ["top classes"]
    col_w = 0.62 if full else 2.0
    text_w = CHAR_W * wrap + 0.2
    lines = [_wrap(d.text, max_words, wrap) for d in shown]
    heights = [max(len(ls), 1 if full else 3) * LINE_H + 0.14 for ls in lines]
    total_w = 0.5 + text_w + col_w * len(label_cols)
    total_h = 0.45 + sum(heights)
    fig_h = total_h + 0.4
    # axes in inches (no layout engine), so row heights computed in inches fit the text
    fig = new_figure(total_w, fig_h, constrained=False)
    ax = fig.add_axes((0.0, 0.0, 1.0, total_h / fig_h))
    ax.set_xlim(0, total_w)
    ax.set_ylim(total_h, 0)
    ax.set_axis_off()
    _header(ax, label_cols, text_w, col_w)
    y = 0.45
    for d, ls, h in zip(shown, lines, heights, strict=True):
        ax.axhline(y, color="0.75", lw=0.5)
        ax.text(0.05, y + 0.06, f"s{d.step} #{d.index}", fontsize=7, va="top", color="0.35")
        ax.text(0.5, y + 0.06, "\n".join(ls), fontsize=8, va="top", linespacing=1.25)
        _label_cells(ax, d, names, full, 0.5 + text_w, col_w, y + 0.06)
        y += h
    heading = title or "decoded distilled sentences"
    if len(sentences) > len(shown):
        heading += f" (first {len(shown)} of {len(sentences)})"
    fig.suptitle(heading, fontsize=9, y=1 - 0.12 / fig_h, va="top")
    return save_figure(fig, Path(out_dir) / stem)


def _header(ax, label_cols: Sequence[str], text_w: float, col_w: float) -> None:
    ax.text(0.5, 0.3, "nearest sentence", fontsize=8, fontweight="bold", va="bottom")
    for j, name in enumerate(label_cols):
        ax.text(
            0.5 + text_w + (j + 0.5) * col_w,
            0.3,
            name,
            fontsize=8,
            fontweight="bold",
            ha="center",
            va="bottom",
        )


def _label_cells(
    ax, d: DecodedSentence, names: Sequence[str], full: bool, x0: float, col_w: float, y: float
) -> None:
    """Every label value (top in bold), or the top-3 classes when there are many classes."""
    if not d.label:
        text = ", ".join(f"{n} {v:+.2f}" for n, v in d.top_classes) or "?"
        ax.text(x0 + 0.05, y, text, fontsize=7, va="top")
        return
    if not full:
        import torch

        top = top_labels(torch.tensor(d.label), names, 3)
        ax.text(x0 + 0.05, y, "\n".join(f"{n}: {v:.2f}" for n, v in top), fontsize=7, va="top")
        return
    best = max(range(len(d.label)), key=d.label.__getitem__)
    for j, v in enumerate(d.label):
        ax.text(
            x0 + (j + 0.5) * col_w,
            y,
            f"{v:.2f}",
            fontsize=7.5,
            ha="center",
            va="top",
            fontweight="bold" if j == best and len(d.label) > 1 else "normal",
        )
