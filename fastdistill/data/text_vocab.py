"""Tokenisation and vocabulary for text distillation (docs/algorithm.md §6).

Sentences become fixed-length rows of token ids once, up front, because distillation re-reads
the real training set thousands of times: the per-batch work is then one embedding lookup.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["PAD", "PAD_ID", "UNK", "UNK_ID", "Tokenizer", "Vocab", "tokenize"]

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1

#: A tokeniser maps one text to its tokens.
Tokenizer = Callable[[str], list[str]]

_CLITICS = r"(?:s|re|ve|ll|m|d)"
# Penn-Treebank-like splits, so that tokens match the vocabularies of GloVe and word2vec (which
# were built from PTB-tokenised text: "don't" -> "do" "n't", "it's" -> "it" "'s"), while words
# such as "o'clock" and "well-known" stay whole, as they are in those vocabularies.
_TOKEN_RE = re.compile(
    rf"""
      \w+(?=n['’]t\b)                          # "do" of "don't", "ca" of "can't"
    | n['’]t\b                                  # the "n't" clitic
    | ['’]{_CLITICS}\b                          # 's 're 've 'll 'm 'd
    | (?:[^\W\d_]\.){{2,}}                       # abbreviations: u.s.  e.g.  a.m.
    | \d+(?:[.,:/]\d+)+                         # 3.5  1,000  10:30  1/2
    | \w+(?:-\w+|['’](?!{_CLITICS}\b|t\b)\w+)*  # words, "well-known", "o'clock"
    | \.\.\.|--|``|''                           # multi-character punctuation
    | [^\w\s]                                   # any other single punctuation character
    """,
    re.VERBOSE,
)


def tokenize(text: str) -> list[str]:
    """Lower-case word tokeniser: words, numbers and punctuation marks become separate tokens.

    Contractions are split the Penn-Treebank way (``"don't" -> ["do", "n't"]``) because that is
    how pretrained word-vector vocabularies were tokenised; hyphenated words stay whole.
    """
    return _TOKEN_RE.findall(text.lower())


class Vocab:
    """Token <-> id map built from a training split: ``<pad>`` = 0, ``<unk>`` = 1, then tokens
    by decreasing training frequency (ties alphabetical, so builds are reproducible).

    ``counts[i]`` is token i's training frequency; ``counts[UNK_ID]`` counts the training tokens
    left out by the size cap or minimum frequency. Both are kept to report word-vector coverage
    over training tokens.
    """

    def __init__(self, tokens: Sequence[str], counts: Sequence[int] | None = None) -> None:
        itos = [PAD, UNK, *tokens]
        if counts is not None and len(counts) != len(itos):
            raise ValueError(
                f"counts must have one entry per vocabulary entry including {PAD} and {UNK} "
                f"({len(itos)}), got {len(counts)}"
            )
        stoi: dict[str, int] = {}
        for i, tok in enumerate(itos):
            if tok in stoi:
                raise ValueError(f"duplicate vocabulary token {tok!r} (ids {stoi[tok]} and {i})")
            stoi[tok] = i
        self.itos: list[str] = itos
        self.stoi: dict[str, int] = stoi
        self.counts: list[int] = [int(c) for c in counts] if counts is not None else [0] * len(itos)

    @classmethod
    def build(
        cls,
        token_lists: Iterable[Sequence[str]],
        *,
        max_size: int | None = None,
        min_freq: int = 1,
    ) -> Vocab:
        """Count tokens and keep those seen at least ``min_freq`` times.

        ``max_size`` caps the whole vocabulary *including* ``<pad>`` and ``<unk>``, so it is the
        number of rows of the embedding table; the most frequent tokens are kept.
        """
        if max_size is not None and max_size < 2:
            raise ValueError(f"max_size must be >= 2 (room for {PAD} and {UNK}), got {max_size}")
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        counter: Counter[str] = Counter()
        for toks in token_lists:
            counter.update(toks)
        for special in (PAD, UNK):
            counter.pop(special, None)  # a literal "<unk>" in the text is just an unknown word
        ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
        kept = [(t, c) for t, c in ranked if c >= min_freq]
        if max_size is not None:
            kept = kept[: max_size - 2]
        dropped = sum(counter.values()) - sum(c for _, c in kept)
        return cls([t for t, _ in kept], [0, dropped, *(c for _, c in kept)])

    # -- lookups ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __getitem__(self, token: str) -> int:
        """Id of ``token``; unknown tokens map to ``<unk>`` (1)."""
        return self.stoi.get(token, UNK_ID)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)}, training_tokens={self.total_tokens})"

    @property
    def total_tokens(self) -> int:
        """Number of training tokens the vocabulary was counted from."""
        return sum(self.counts)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Ids of ``tokens`` (no truncation or padding)."""
        get = self.stoi.get
        return [get(t, UNK_ID) for t in tokens]

    def encode_batch(
        self, token_lists: Sequence[Sequence[str]], seq_len: int
    ) -> tuple[Tensor, Tensor]:
        """Ids ``[N, seq_len]`` (int64) and lengths ``[N]`` (int64) of tokenised texts.

        Keeps the first ``seq_len`` tokens and pads at the end with ``<pad>`` (docs/algorithm.md §6).
        Lengths count the real tokens kept, at least 1: an empty text is all padding with
        length 1, so recurrent models that read up to the last real token still read one step.
        """
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        n = len(token_lists)
        ids = np.zeros((n, seq_len), dtype=np.int64)
        lengths = np.ones(n, dtype=np.int64)
        get = self.stoi.get
        for i, toks in enumerate(token_lists):
            row = [get(t, UNK_ID) for t in toks[:seq_len]]
            if row:
                ids[i, : len(row)] = row
                lengths[i] = len(row)
        return torch.from_numpy(ids), torch.from_numpy(lengths)

    def decode(self, ids: Sequence[int] | Tensor, *, strip_padding: bool = True) -> list[str]:
        """Tokens of an id sequence; trailing ``<pad>`` tokens are dropped by default."""
        seq = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        if strip_padding:
            while seq and seq[-1] == PAD_ID:
                seq.pop()
        return [self.itos[i] for i in seq]

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (tokens after the two specials, and all counts)."""
        return {"tokens": self.itos[2:], "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocab:
        return cls(list(d["tokens"]), d.get("counts"))
