"""Subword tokenisers of transformer vocabularies (the word-vector tables of
``fastdistill.data.word_vectors`` that come from a transformer's embedding matrix)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["WordPieceTokenizer"]


class WordPieceTokenizer:
    """A transformer's WordPiece tokeniser (``tokenizers`` library), as ``text -> tokens``.

    No special tokens, no truncation: the dataset pipeline truncates to its own length.
    """

    def __init__(self, path: Path, lowercase: bool = True) -> None:
        try:
            from tokenizers import Tokenizer
            from tokenizers.implementations import BertWordPieceTokenizer
        except ImportError:
            raise ImportError("transformer embeddings need the package tokenizers") from None
        if path.suffix == ".json":
            tok = Tokenizer.from_file(str(path))
        else:
            tok = BertWordPieceTokenizer(str(path), lowercase=lowercase)
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok

    def __call__(self, text: str) -> list[str]:
        return list(self._tok.encode(text, add_special_tokens=False).tokens)

    def batch(self, texts: Sequence[str]) -> list[list[str]]:
        """Tokenise many texts at once (parallel in the Rust library)."""
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [list(e.tokens) for e in encs]
