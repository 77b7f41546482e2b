"""Nearest-word decoding of distilled text (docs/algorithm.md §6; the paper's Tables 6 and 7).

Every distilled vector is replaced by its Euclidean-nearest word vector, found with the
``nearest_embedding`` op (tiled matrix products with fused k-selection, so a whole distilled set
against a 400k-word table takes one call and bounded memory). Decoding can use the dataset's
vocabulary (words that occur in training) or a whole word-vector table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from fastdistill.data.text import TextData, nearest_token_ids
from fastdistill.data.text_vocab import PAD
from fastdistill.data.word_vectors import WordVectors
from fastdistill.distilled import DistilledSet


@dataclass
class DecodedSentence:
    step: int
    index: int
    text: str
    label: list[float]  # the learned label row (or [scalar] for binary tasks)
    top_classes: list[tuple[str, float]]  # highest label entries, best first


def nearest_words(
    x: Tensor, table: Tensor, words: list[str], *, metric: str = "euclidean"
) -> list[list[str]]:
    """Words of the nearest table rows to each vector of ``x`` ``[M, L, D]``."""
    ids = nearest_token_ids(x, table, metric=metric).tolist()
    return [[words[i] for i in row] for row in ids]


def decode_distilled(
    distilled: DistilledSet,
    data: TextData,
    *,
    against: Literal["vocab", "table"] = "vocab",
    vectors: WordVectors | None = None,
    metric: str = "euclidean",
    top: int = 3,
) -> list[DecodedSentence]:
    """The nearest sentence of every distilled example, with its label row.

    ``against="vocab"`` searches the dataset's vocabulary (its embedding table, where words
    without a pretrained vector are zero rows); ``"table"`` searches all of ``vectors``.
    Trailing padding is dropped.
    """
    if against == "vocab":
        table, words = data.embeddings, list(data.vocab.itos)
    elif against == "table":
        if vectors is None:
            raise ValueError("decoding against the whole table needs `vectors`")
        table, words = vectors.vectors, list(vectors.words)
    else:
        raise ValueError(f"against must be 'vocab' or 'table', got {against!r}")
    S, N = distilled.data.shape[:2]
    sentences = nearest_words(distilled.data.reshape(S * N, *distilled.data.shape[2:]), table,
                              words, metric=metric)  # fmt: skip
    names = list(data.class_names)
    out = []
    for k, tokens in enumerate(sentences):
        s, i = divmod(k, N)
        while tokens and tokens[-1] == PAD:
            tokens = tokens[:-1]
        row = distilled.labels[s, i].detach().cpu().double()
        row = row.reshape(-1)
        order = torch.argsort(row, descending=True)[:top].tolist() if row.numel() > 1 else []
        top_classes = [(names[c], float(row[c])) for c in order]
        out.append(DecodedSentence(s, i, " ".join(tokens), row.tolist(), top_classes))
    return out


def format_decoded(sentences: list[DecodedSentence]) -> str:
    """Readable table: one line per distilled sentence with its strongest label entries."""
    lines = []
    for d in sentences:
        if d.top_classes:
            label = ", ".join(f"{name} {value:+.2f}" for name, value in d.top_classes)
        else:
            label = f"label {d.label[0]:+.3f}"
        lines.append(f"[step {d.step} #{d.index}] ({label})  {d.text}")
    return "\n".join(lines) + "\n"


def write_decoded(sentences: list[DecodedSentence], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``decoded.txt`` (readable) and ``decoded.json`` (with full label rows)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    txt, js = out / "decoded.txt", out / "decoded.json"
    txt.write_text(format_decoded(sentences), encoding="utf-8")
    js.write_text(json.dumps([asdict(d) for d in sentences], indent=1), encoding="utf-8")
    return txt, js
