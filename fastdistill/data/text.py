"""In-memory text datasets for text dataset distillation (TDD, docs/algorithm.md §6).

Sentences are tokenised once into fixed-length rows of token ids (``[N, L]``) plus a frozen
table of pretrained word vectors (``[V, D]``). What a model sees is the embedded sequence
``[N, L, D]`` (:meth:`TextData.encode`), produced per batch because the whole embedded IMDB
training set would take gigabytes; distilled sentences are learned directly in that
embedding space and never pass through the table.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fastdistill.data.protocol import validate_classes, validate_labels

from . import text_readers as readers
from .paths import default_cache_dir, default_data_root
from .text_vocab import Tokenizer, Vocab, tokenize
from .word_vectors import Coverage, WordVectors, load_word_vectors

__all__ = [
    "TEXT_DATASETS",
    "TextData",
    "from_texts",
    "infer_class_names",
    "load_text_dataset",
    "reload_text_dataset",
    "text_from_files",
]

log = logging.getLogger(__name__)

#: Names accepted by :func:`load_text_dataset`.
TEXT_DATASETS: tuple[str, ...] = ("imdb", "sst5", "sst2", "trec6", "trec50")

_ALIASES = {
    "aclimdb": "imdb",
    "sst": "sst5",
    "sst-5": "sst5",
    "sst_5": "sst5",
    "sst-2": "sst2",
    "sst_2": "sst2",
    "trec": "trec6",
    "trec-6": "trec6",
    "trec_6": "trec6",
    "trec-50": "trec50",
    "trec_50": "trec50",
}


def is_text_dataset(name: str) -> bool:
    """Whether ``name`` (or an alias) is one of :data:`TEXT_DATASETS`, or a text table of
    your own (``csv:PATH``, ``tsv:PATH``, ``jsonl:PATH``; fastdistill/data/own.py)."""
    key = name.strip().lower()
    if key.startswith(("csv:", "tsv:", "jsonl:")):
        return True
    return _ALIASES.get(key, key) in TEXT_DATASETS


def nearest_token_ids(x: Tensor, table: Tensor, *, metric: str = "euclidean") -> Tensor:
    """Row ids ``[..., L]`` of the nearest ``table`` row to each vector of ``x`` ``[..., L, D]``:
    the nearest-word decoding of distilled text (docs/algorithm.md §6.5), exact, with
    ``fastdistill.ops.nearest_embedding``. Ties go to the lowest id, so a zero vector decodes to
    ``<pad>`` (row 0) when the table has zero rows."""
    from fastdistill.ops import embedding_table_norms, nearest_embedding

    flat = x.detach().reshape(-1, x.shape[-1]).to(table.device, table.dtype)
    norms = embedding_table_norms(table, metric)
    _, idx = nearest_embedding(flat, table, 1, metric, norms)
    return idx[:, 0].reshape(x.shape[:-1])


@dataclass
class TextData:
    """A tokenised text classification dataset with its frozen embedding table.

    ``train_x``/``test_x``: int64 token ids ``[N, L]`` (first ``L`` tokens, ``<pad>`` = 0 at
    the end); ``*_lengths``: int64 ``[N]`` real tokens kept, in ``[1, L]`` (an empty text is
    all padding with length 1); ``*_y``: int64 class indices. ``embeddings`` is float32
    ``[len(vocab), D]``: row ``i`` is the pretrained vector of token ``i``, zeros for
    ``<pad>``, ``<unk>`` and words without a vector. ``binary`` tasks (two classes) use one
    logit. ``vectors_name`` says which pretrained vectors were used and ``coverage`` how much
    of the vocabulary they covered: results must report both.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    train_lengths: Tensor
    test_lengths: Tensor
    num_classes: int
    class_names: list[str]
    vocab: Vocab
    embeddings: Tensor
    binary: bool = False
    vectors_name: str = ""
    coverage: Coverage | None = None
    #: How to load this dataset again (``reload_text_dataset``); filled by the loaders.
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.class_names = [str(c) for c in self.class_names]
        self.binary = bool(self.binary)
        self._validate()

    def _validate_split(self, where: str, split: str) -> None:
        x, y, n = (getattr(self, f"{split}_{k}") for k in ("x", "y", "lengths"))
        for t, what in ((x, "x"), (y, "y"), (n, "lengths")):
            if not isinstance(t, Tensor):
                raise TypeError(f"{where}: {split}_{what} must be a torch.Tensor")
            if t.dtype != torch.int64:
                raise TypeError(f"{where}: {split}_{what} must be int64, got {t.dtype}")
        if x.dim() != 2:
            raise ValueError(
                f"{where}: {split}_x must be [N, L] token ids, got shape {tuple(x.shape)}"
            )
        if y.dim() != 1 or n.dim() != 1 or y.shape[0] != x.shape[0] or n.shape[0] != x.shape[0]:
            raise ValueError(
                f"{where}: {split}_x has {x.shape[0]} rows but {split}_y has shape "
                f"{tuple(y.shape)} and {split}_lengths {tuple(n.shape)} (expected [N])"
            )

    def _validate(self) -> None:
        where = f"TextData({self.name!r})"
        for split in ("train", "test"):
            self._validate_split(where, split)
        if self.train_x.shape[1] != self.test_x.shape[1]:
            raise ValueError(
                f"{where}: train sequences have length {self.train_x.shape[1]} but test "
                f"sequences {self.test_x.shape[1]}"
            )
        if self.train_x.shape[0] == 0:
            raise ValueError(f"{where}: the training split is empty")
        if self.train_x.shape[1] < 1:
            raise ValueError(f"{where}: sequence length must be >= 1")
        emb = self.embeddings
        if not isinstance(emb, Tensor) or emb.dim() != 2 or not emb.is_floating_point():
            raise ValueError(f"{where}: embeddings must be a floating-point [V, D] tensor")
        if emb.shape[0] != len(self.vocab):
            raise ValueError(
                f"{where}: embeddings have {emb.shape[0]} rows but the vocabulary has "
                f"{len(self.vocab)} tokens"
            )
        for split, x, n in (
            ("train", self.train_x, self.train_lengths),
            ("test", self.test_x, self.test_lengths),
        ):
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= len(self.vocab)):
                raise ValueError(
                    f"{where}: {split}_x has token ids in [{int(x.min())}, {int(x.max())}], "
                    f"expected [0, {len(self.vocab)})"
                )
            if n.numel() and (int(n.min()) < 1 or int(n.max()) > x.shape[1]):
                raise ValueError(
                    f"{where}: {split}_lengths must lie in [1, {x.shape[1]}], got "
                    f"[{int(n.min())}, {int(n.max())}]"
                )
        validate_classes(where, self.num_classes, self.class_names)
        if self.binary and self.num_classes != 2:
            raise ValueError(f"{where}: binary=True needs 2 classes, got {self.num_classes}")
        validate_labels(
            where, self.train_y, self.test_y, self.num_classes, self.class_names, "sentence"
        )

    # -- sizes --------------------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        """Fixed sequence length L."""
        return int(self.train_x.shape[1])

    @property
    def embed_dim(self) -> int:
        """Word-vector dimension D."""
        return int(self.embeddings.shape[1])

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def num_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.test_x.shape[0])

    @property
    def num_outputs(self) -> int:
        """Logits per example: 1 for binary tasks, else ``num_classes``."""
        return 1 if self.binary else self.num_classes

    # -- what the model sees ------------------------------------------------------------------
    def encode(self, ids: Tensor) -> Tensor:
        """Frozen embedding lookup: token ids ``[..., L]`` -> vectors ``[..., L, D]`` on the
        embeddings' device. This is the model input; distilled data lives in this space."""
        return F.embedding(ids.to(self.embeddings.device), self.embeddings)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one model input, ``(L, D)``: the shape of each distilled sentence."""
        return (self.seq_len, self.embed_dim)

    def model_inputs(self, x: Tensor) -> Tensor:
        """Stored examples -> model inputs: token ids are embedded, float inputs (already in
        embedding space, e.g. distilled sentences) pass through."""
        return x if x.is_floating_point() else self.encode(x)

    def model_kwargs(self) -> dict[str, int]:
        """Keyword arguments that size a registered text model for this data."""
        return {"embed_dim": self.embed_dim, "seq_len": self.seq_len}

    def describe(self) -> dict[str, Any]:
        """JSON-able description stored with distilled sets: what the data was, which vectors
        embedded it, and how to load it again (``source``)."""
        return {
            "kind": "text",
            "name": self.name,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "binary": self.binary,
            "seq_len": self.seq_len,
            "embed_dim": self.embed_dim,
            "vocab_size": self.vocab_size,
            "vectors": self.vectors_name,
            "coverage": self.coverage.to_dict() if self.coverage is not None else None,
            "source": dict(self.source),
        }

    # -- decoding -----------------------------------------------------------------------------
    def nearest_ids(self, x: Tensor, *, metric: str = "euclidean") -> Tensor:
        """Token ids ``[..., L]`` of the nearest vocabulary vector to each vector of ``x``
        ``[..., L, D]`` (:func:`nearest_token_ids` over this vocabulary's embeddings)."""
        return nearest_token_ids(x, self.embeddings, metric=metric)

    def decode(self, ids: Tensor) -> list[str]:
        """Sentences of token-id rows ``[N, L]`` (trailing padding dropped)."""
        return [" ".join(self.vocab.decode(row)) for row in ids.reshape(-1, ids.shape[-1])]

    def nearest_sentences(self, x: Tensor) -> list[str]:
        """The "nearest sentence" of each embedded sequence ``[N, L, D]``."""
        return self.decode(self.nearest_ids(x))

    # -- devices ------------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> TextData:
        """A copy with all tensors on ``device`` (self if already there)."""
        device = torch.device(device)
        tensors = self._tensor_fields()
        if all(_same_device(getattr(self, k).device, device) for k in tensors):
            return self
        return dataclasses.replace(self, **{k: getattr(self, k).to(device) for k in tensors})

    @staticmethod
    def _tensor_fields() -> tuple[str, ...]:
        return (
            "train_x",
            "train_y",
            "test_x",
            "test_y",
            "train_lengths",
            "test_lengths",
            "embeddings",
        )

    def __repr__(self) -> str:
        return (
            f"TextData(name={self.name!r}, train={self.num_train}, test={self.num_test}, "
            f"seq_len={self.seq_len}, vocab={self.vocab_size}, vectors={self.vectors_name!r} "
            f"(D={self.embed_dim}), num_classes={self.num_classes}, binary={self.binary}, "
            f"device={self.train_x.device})"
        )


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (b.index is None or a.index == b.index)


# --------------------------------------------------------------------------------------------
# construction from raw texts


def _tokenize_all(texts: Sequence[str], tok: Callable[[str], list[str]]) -> list[list[str]]:
    batch = getattr(tok, "batch", None)
    if callable(batch):
        return batch(texts)
    return [tok(t) for t in texts]


def _label_ids(labels: Sequence[Any], class_names: Sequence[str], where: str) -> Tensor:
    index = {str(c): i for i, c in enumerate(class_names)}
    out = []
    for lab in labels:
        if isinstance(lab, (int, torch.Tensor)) and not isinstance(lab, bool):
            i = int(lab)
            if not 0 <= i < len(class_names):
                raise ValueError(f"{where}: label {i} out of range [0, {len(class_names)})")
        else:
            i = index.get(str(lab), -1)
            if i < 0:
                raise ValueError(
                    f"{where}: label {lab!r} is not one of the classes {list(class_names)}"
                )
        out.append(i)
    return torch.tensor(out, dtype=torch.int64)


def infer_class_names(labels: Sequence[str]) -> list[str]:
    """Sorted distinct labels; numerically sorted when all look like integers."""
    distinct = sorted({str(x) for x in labels})
    try:
        return sorted(distinct, key=int)
    except ValueError:
        return distinct


def from_texts(
    train_texts: Sequence[str],
    train_labels: Sequence[int] | Sequence[str],
    test_texts: Sequence[str],
    test_labels: Sequence[int] | Sequence[str],
    *,
    class_names: Sequence[str],
    seq_len: int | None,
    vectors: WordVectors | str | Path,
    max_vocab: int | None = None,
    min_freq: int = 1,
    binary: bool | None = None,
    name: str = "custom",
    tokenizer: Tokenizer | None = None,
    source: dict[str, Any] | None = None,
) -> TextData:
    """Tokenise, build the vocabulary from the training texts, encode and embed.

    Labels are class indices or class names. ``seq_len=None`` uses the longest training text.
    ``max_vocab`` caps the vocabulary including ``<pad>``/``<unk>``; ``min_freq`` drops rarer
    training tokens. ``binary`` defaults to ``len(class_names) == 2`` (one logit, BCE). The
    tokeniser is ``tokenizer``, else the vectors' own (subword vocabularies), else
    :func:`~fastdistill.data.text_vocab.tokenize`.
    """
    wv = load_word_vectors(vectors)
    tok = tokenizer or wv.tokenizer or tokenize
    if len(train_texts) != len(train_labels) or len(test_texts) != len(test_labels):
        raise ValueError(
            f"{name}: {len(train_texts)}/{len(test_texts)} train/test texts but "
            f"{len(train_labels)}/{len(test_labels)} labels"
        )
    train_tokens = _tokenize_all(train_texts, tok)
    test_tokens = _tokenize_all(test_texts, tok)
    vocab = Vocab.build(train_tokens, max_size=max_vocab, min_freq=min_freq)
    if seq_len is None:
        seq_len = max(1, max((len(t) for t in train_tokens), default=1))
    train_x, train_n = vocab.encode_batch(train_tokens, seq_len)
    test_x, test_n = vocab.encode_batch(test_tokens, seq_len)
    table, coverage = wv.vectors_for(vocab)
    log.info("%s: vocabulary %d, %s: %s", name, len(vocab), wv.name, coverage)
    k = len(class_names)
    return TextData(
        name=name,
        train_x=train_x,
        train_y=_label_ids(train_labels, class_names, f"{name} train"),
        test_x=test_x,
        test_y=_label_ids(test_labels, class_names, f"{name} test"),
        train_lengths=train_n,
        test_lengths=test_n,
        num_classes=k,
        class_names=list(class_names),
        vocab=vocab,
        embeddings=table,
        binary=(k == 2) if binary is None else binary,
        vectors_name=wv.name,
        coverage=coverage,
        source=dict(source or {}),
    )


# --------------------------------------------------------------------------------------------
# named benchmarks

_FINDERS = {"imdb": readers.find_imdb, "sst": readers.find_sst, "trec": readers.find_trec}
_LAYOUTS = {
    "imdb": "aclImdb/{train,test}/{pos,neg}/*.txt",
    "sst": "trees/{train,dev,test}.txt (PTB trees)",
    "trec": "trec/{train_5500.label,TREC_10.label}",
}
_DOWNLOADERS = {
    "imdb": readers.download_imdb,
    "sst": readers.download_sst,
    "trec": readers.download_trec,
}


def _family(key: str) -> str:
    return "imdb" if key == "imdb" else key[:-1] if key.startswith("sst") else key[:4]


def _resolve_text_root(key: str, root: str | Path | None, download: bool, cache_dir: Path) -> Path:
    fam = _family(key)
    find = _FINDERS[fam]
    if root is not None:
        path = Path(root).expanduser()
        if find(path) is None and download:
            _DOWNLOADERS[fam](path)
        return path  # the reader raises a clear error naming the paths it looked in
    candidates = [p for p in (default_data_root(), cache_dir / "datasets") if p is not None]
    for cand in candidates:
        if find(cand) is not None:
            return cand
    if download:
        dest = cache_dir / "datasets"
        _DOWNLOADERS[fam](dest)
        return dest
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{key}: no local copy found (looked under {looked} for {_LAYOUTS[fam]}); pass "
        "root=..., set FASTDISTILL_DATA_ROOT, or pass download=True (download=False now)"
    )


def load_text_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    seq_len: int | None,
    vectors: WordVectors | str | Path,
    max_vocab: int | None = None,
    min_freq: int = 1,
    download: bool = False,
    cache_dir: str | Path | None = None,
    tokenizer: Tokenizer | None = None,
) -> TextData:
    """Load a text benchmark (:data:`TEXT_DATASETS`) as a :class:`TextData`.

    * ``imdb``: aclImdb reviews, binary neg/pos, 25,000 / 25,000.
    * ``sst5`` / ``sst2``: SST sentences (root label of each PTB tree), 5 classes, or binary
      with neutral dropped; train.txt / test.txt (dev.txt is not used).
    * ``trec6`` / ``trec50``: TREC questions, coarse (6) or fine (50) labels; 5,452 / 500.

    ``root`` holds the files in their published layout (default :func:`default_data_root`,
    then ``cache_dir/datasets``); ``download=True`` fetches missing files from their official
    sites. ``vectors`` is a :class:`WordVectors` or a name/path for :func:`load_word_vectors`
    (e.g. ``"glove.6B.50d"``). See :func:`from_texts` for the other options.
    """
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in TEXT_DATASETS:
        raise ValueError(
            f"unknown text dataset {name!r}; known datasets: {', '.join(TEXT_DATASETS)}"
        )
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    data_root = _resolve_text_root(key, root, download, cache)
    binary = key in ("imdb", "sst2")
    if key == "imdb":
        splits = readers.read_imdb(data_root)
        class_names = list(readers.IMDB_CLASSES)
    elif key.startswith("sst"):
        splits = readers.read_sst(data_root, binary=binary)
        class_names = ["negative", "positive"] if binary else list(readers.SST_CLASSES)
    else:
        splits = readers.read_trec(data_root, fine=key == "trec50")
        class_names = sorted(set(splits["train"].labels))
    wv = load_word_vectors(vectors, cache_dir=cache_dir)
    train, test = splits["train"], splits["test"]
    source = {
        "loader": "load_text_dataset",
        "name": key,
        "seq_len": seq_len,
        "vectors": wv.source or wv.name,
        "max_vocab": max_vocab,
        "min_freq": min_freq,
    }
    return from_texts(
        train.texts,
        train.labels,
        test.texts,
        test.labels,
        class_names=class_names,
        seq_len=seq_len,
        vectors=wv,
        max_vocab=max_vocab,
        min_freq=min_freq,
        binary=binary,
        name=key,
        tokenizer=tokenizer,
        source=source,
    )


def text_from_files(
    train: str | Path,
    test: str | Path,
    *,
    seq_len: int | None,
    vectors: WordVectors | str | Path,
    text_column: str | int = "text",
    label_column: str | int = "label",
    format: str | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    class_names: Sequence[str] | None = None,
    binary: bool | None = None,
    max_vocab: int | None = None,
    min_freq: int = 1,
    name: str | None = None,
    tokenizer: Tokenizer | None = None,
) -> TextData:
    """A :class:`TextData` from two CSV/TSV/JSON-lines files of (text, label) rows.

    See :func:`~fastdistill.data.text_readers.read_table` for the file options. Classes are
    ``class_names`` if given (labels must be those names, or indices into them), else the
    distinct training labels sorted (numerically if they are all integers); a test label not
    among them is an error.
    """
    cols = {"text_column": text_column, "label_column": label_column, "format": format}
    kw = dict(cols, delimiter=delimiter, encoding=encoding)
    tr = readers.read_table(train, **kw)
    te = readers.read_table(test, **kw)
    if class_names is None:
        class_names = infer_class_names(tr.labels)
        train_labels: Sequence[Any] = tr.labels
        test_labels: Sequence[Any] = te.labels
    else:
        train_labels = [_named_or_index(x, class_names) for x in tr.labels]
        test_labels = [_named_or_index(x, class_names) for x in te.labels]
    wv = load_word_vectors(vectors)
    source = {
        "loader": "text_from_files",
        "train": str(Path(train).expanduser().resolve()),
        "test": str(Path(test).expanduser().resolve()),
        "seq_len": seq_len,
        "vectors": wv.source or wv.name,
        "max_vocab": max_vocab,
        "min_freq": min_freq,
        "class_names": list(class_names),
        "binary": binary,
        "delimiter": delimiter,
        "encoding": encoding,
        **cols,
    }
    return from_texts(
        tr.texts,
        train_labels,
        te.texts,
        test_labels,
        class_names=list(class_names),
        seq_len=seq_len,
        vectors=wv,
        max_vocab=max_vocab,
        min_freq=min_freq,
        binary=binary,
        name=name or Path(train).stem,
        tokenizer=tokenizer,
        source=source,
    )


def _named_or_index(label: str, class_names: Sequence[str]) -> str | int:
    """A file label as a class name, or as an index when it is an integer and not a name."""
    if label in class_names:
        return label
    try:
        return int(label)
    except ValueError:
        return label  # reported by _label_ids with the list of classes


def reload_text_dataset(description: dict[str, Any], root: str | Path | None = None) -> TextData:
    """Load again the dataset of a :meth:`TextData.describe` record (same vocabulary, since it
    is rebuilt deterministically from the same training texts)."""
    src = dict(description.get("source") or {})
    loader = src.pop("loader", None)
    if loader == "load_text_dataset":
        name = src.pop("name")
        return load_text_dataset(name, root, **src)
    if loader == "text_from_files":
        train, test = src.pop("train"), src.pop("test")
        return text_from_files(train, test, **src)
    raise ValueError(
        f"text dataset {description.get('name')!r} was not made by load_text_dataset or "
        "text_from_files; it cannot be reloaded from its description"
    )
