"""Readers for the text benchmarks in their standard published layouts, and for CSV/TSV/JSONL.

Each reader returns raw texts and labels; tokenisation and vocabulary happen in
:mod:`fastdistill.data.text`. Every "not found" error names the paths that were looked at,
because a wrong ``root`` is by far the most common failure.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "IMDB_URL",
    "SST_URL",
    "TREC_URLS",
    "TextSplit",
    "read_imdb",
    "read_sst",
    "read_table",
    "read_trec",
]

log = logging.getLogger(__name__)

#: Where the datasets are published (used only with ``download=True``).
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
SST_URL = "https://nlp.stanford.edu/sentiment/trainDevTestTrees_PTB.zip"
TREC_URLS = {
    "train_5500.label": "https://cogcomp.seas.upenn.edu/Data/QA/QC/train_5500.label",
    "TREC_10.label": "https://cogcomp.seas.upenn.edu/Data/QA/QC/TREC_10.label",
}

IMDB_CLASSES = ("neg", "pos")
SST_CLASSES = ("very negative", "negative", "neutral", "positive", "very positive")
TREC_FILES = {"train": "train_5500.label", "test": "TREC_10.label"}


@dataclass
class TextSplit:
    """Raw texts and their labels (class names as strings) of one split."""

    texts: list[str]
    labels: list[str]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)


def _read_text(path: Path) -> str:
    # errors="replace": a stray invalid byte (TREC has one) must not make a dataset unloadable.
    return path.read_text(encoding="utf-8", errors="replace")


# --------------------------------------------------------------------------------------------
# IMDB: aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt

_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def find_imdb(root: Path) -> Path | None:
    """The ``aclImdb`` folder under ``root`` (or ``root`` itself), or None."""
    for cand in (root / "aclImdb", root / "imdb" / "aclImdb", root):
        if all((cand / s / c).is_dir() for s in ("train", "test") for c in IMDB_CLASSES):
            return cand
    return None


def read_imdb(root: str | Path) -> dict[str, TextSplit]:
    """IMDB movie reviews (Maas et al. 2011), ``{"train", "test"}``, labels ``neg``/``pos``.

    ``root`` is the ``aclImdb`` folder or a folder containing it. HTML line breaks
    (``<br />``) are replaced by spaces; the unlabelled ``train/unsup`` reviews are ignored.
    Files are read in sorted name order, negatives first.
    """
    root = Path(root).expanduser()
    folder = find_imdb(root)
    if folder is None:
        raise FileNotFoundError(
            f"imdb: no aclImdb/{{train,test}}/{{pos,neg}}/ folders found; looked in "
            f"{root / 'aclImdb'}, {root / 'imdb' / 'aclImdb'} and {root}. Extract "
            f"aclImdb_v1.tar.gz ({IMDB_URL}) there, or pass download=True"
        )
    out = {}
    for split in ("train", "test"):
        texts: list[str] = []
        labels: list[str] = []
        for cls in IMDB_CLASSES:
            files = sorted((folder / split / cls).glob("*.txt"))
            if not files:
                raise ValueError(f"imdb: wrong layout: no *.txt files in {folder / split / cls}")
            texts += [_BR.sub(" ", _read_text(f)) for f in files]
            labels += [cls] * len(files)
        out[split] = TextSplit(texts, labels)
    return out


# --------------------------------------------------------------------------------------------
# SST: PTB trees, one sentence per line, "(3 (2 It) (4 (2 's) ...))"

# Leaves are split by ASCII spaces only: some tokens hold U+00A0 ("2\xa01/2"), which ``\s``
# would match. Slashes are escaped in the trees (``\/``).
_SST_LEAF = re.compile(r"\(\d+ ([^() \t\r\n]+)\)")
_SST_ROOT = re.compile(r"\s*\((\d+)\s")
_PTB_BRACKETS = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}"}


def find_sst(root: Path) -> Path | None:
    """The folder holding SST's ``train.txt``/``dev.txt``/``test.txt`` tree files, or None."""
    for cand in _sst_candidates(root):
        if all((cand / f"{s}.txt").is_file() for s in ("train", "dev", "test")):
            return cand
    return None


def _sst_candidates(root: Path) -> list[Path]:
    return [root / "sst" / "trees", root / "sst", root / "trees", root]


def parse_sst_tree(line: str) -> tuple[str, int]:
    """Sentence (leaves joined by spaces, PTB brackets restored) and root label of one tree."""
    m = _SST_ROOT.match(line)
    if m is None:
        raise ValueError(f"not a PTB tree: {line[:60]!r}")
    leaves = [_PTB_BRACKETS.get(t, t).replace("\\/", "/") for t in _SST_LEAF.findall(line)]
    return " ".join(leaves), int(m.group(1))


def read_sst(root: str | Path, *, binary: bool = False) -> dict[str, TextSplit]:
    """Stanford Sentiment Treebank, sentence level (root label of each tree).

    Returns ``{"train", "dev", "test"}``. Fine-grained: the five classes of
    :data:`SST_CLASSES`. ``binary=True``: neutral sentences dropped, the two negative classes
    become ``negative`` and the two positive ones ``positive`` (SST-2).
    """
    root = Path(root).expanduser()
    folder = find_sst(root)
    if folder is None:
        looked = ", ".join(str(c) for c in _sst_candidates(root))
        raise FileNotFoundError(
            f"sst: no train.txt/dev.txt/test.txt tree files found; looked in {looked}. Extract "
            f"trainDevTestTrees_PTB.zip ({SST_URL}) there, or pass download=True"
        )
    out = {}
    for split in ("train", "dev", "test"):
        path = folder / f"{split}.txt"
        texts: list[str] = []
        labels: list[str] = []
        for lineno, line in enumerate(_read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                text, label = parse_sst_tree(line)
            except ValueError as exc:
                raise ValueError(f"sst: {path}:{lineno}: {exc}") from None
            if not 0 <= label < len(SST_CLASSES):
                raise ValueError(f"sst: {path}:{lineno}: root label {label} is not in 0..4")
            if binary:
                if label == 2:
                    continue
                labels.append("negative" if label < 2 else "positive")
            else:
                labels.append(SST_CLASSES[label])
            texts.append(text)
        out[split] = TextSplit(texts, labels)
    return out


# --------------------------------------------------------------------------------------------
# TREC: "COARSE:fine question tokens ..."


def find_trec(root: Path) -> Path | None:
    """The folder holding ``train_5500.label`` and ``TREC_10.label``, or None."""
    for cand in (root / "trec", root / "TREC", root):
        if all((cand / f).is_file() for f in TREC_FILES.values()):
            return cand
    return None


def read_trec(root: str | Path, *, fine: bool = False) -> dict[str, TextSplit]:
    """TREC question classification (Li & Roth 2002), ``{"train", "test"}``.

    Labels are the coarse class (``DESC``, 6 classes) or, with ``fine=True``, the full label
    (``DESC:manner``, 50 classes). Files are read as UTF-8 with invalid bytes replaced (one
    training question has a stray byte).
    """
    root = Path(root).expanduser()
    folder = find_trec(root)
    if folder is None:
        looked = ", ".join(str(c) for c in (root / "trec", root / "TREC", root))
        raise FileNotFoundError(
            f"trec: no {' and '.join(TREC_FILES.values())} found; looked in {looked}. "
            "Download them from the cogcomp QC page, or pass download=True"
        )
    out = {}
    for split, fname in TREC_FILES.items():
        path = folder / fname
        texts: list[str] = []
        labels: list[str] = []
        for lineno, line in enumerate(_read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            label, _, text = line.strip().partition(" ")
            coarse, colon, _ = label.partition(":")
            if not colon or not coarse:
                raise ValueError(
                    f"trec: {path}:{lineno}: expected 'COARSE:fine question...', got {line[:60]!r}"
                )
            labels.append(label if fine else coarse)
            texts.append(text)
        out[split] = TextSplit(texts, labels)
    return out


# --------------------------------------------------------------------------------------------
# CSV / TSV / JSONL


def _table_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        fmt = fmt.lower().lstrip(".")
        if fmt not in ("csv", "tsv", "jsonl"):
            raise ValueError(f"unknown table format {fmt!r}; use 'csv', 'tsv' or 'jsonl'")
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".csv",):
        return "csv"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise ValueError(
        f"cannot tell the format of {path} from its suffix {suffix!r}; pass format='csv', "
        "'tsv' or 'jsonl'"
    )


def read_table(
    path: str | Path,
    *,
    text_column: str | int = "text",
    label_column: str | int = "label",
    format: str | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8",
) -> TextSplit:
    """(text, label) rows of a CSV, TSV or JSON-lines file.

    The format comes from the suffix (``.csv``, ``.tsv``/``.tab``, ``.jsonl``/``.ndjson``)
    unless ``format`` is given. CSV/TSV files have a header row naming the columns, unless both
    columns are given as integer positions, in which case there is no header. Labels are kept as
    strings (an integer label ``1`` becomes ``"1"``).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"text table {path} does not exist")
    fmt = _table_format(path, format)
    if fmt == "jsonl":
        return _read_jsonl(path, text_column, label_column, encoding)
    delim = delimiter if delimiter is not None else ("\t" if fmt == "tsv" else ",")
    positional = isinstance(text_column, int) and isinstance(label_column, int)
    texts: list[str] = []
    labels: list[str] = []
    with path.open(newline="", encoding=encoding, errors="replace") as f:
        reader = csv.reader(f, delimiter=delim)
        if positional:
            ti, li = int(text_column), int(label_column)
            start = 1
        else:
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path} is empty (expected a header row)")
            ti = _column_index(header, text_column, path)
            li = _column_index(header, label_column, path)
            start = 2
        for lineno, row in enumerate(reader, start):
            if not row or all(not c.strip() for c in row):
                continue
            if max(ti, li) >= len(row):
                raise ValueError(
                    f"{path}:{lineno}: row has {len(row)} fields, need columns {ti} and {li}"
                )
            texts.append(row[ti])
            labels.append(row[li].strip())
    return TextSplit(texts, labels)


def _column_index(header: list[str], column: str | int, path: Path) -> int:
    if isinstance(column, int):
        if not 0 <= column < len(header):
            raise ValueError(f"{path}: column {column} out of range ({len(header)} columns)")
        return column
    names = [h.strip() for h in header]
    if column not in names:
        raise ValueError(f"{path}: no column {column!r} in the header {names}")
    return names.index(column)


def _read_jsonl(path: Path, text_key: str | int, label_key: str | int, encoding: str) -> TextSplit:
    texts: list[str] = []
    labels: list[str] = []
    with path.open(encoding=encoding, errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc})") from None
            try:
                text, label = obj[text_key], obj[label_key]
            except (KeyError, IndexError, TypeError):
                raise ValueError(
                    f"{path}:{lineno}: expected keys {text_key!r} and {label_key!r}, got "
                    f"{sorted(obj) if isinstance(obj, dict) else type(obj).__name__}"
                ) from None
            texts.append("" if text is None else str(text))
            labels.append(str(label).strip())
    return TextSplit(texts, labels)


# --------------------------------------------------------------------------------------------
# downloads (only with download=True)


def download_imdb(dest: Path) -> None:
    """Fetch and extract aclImdb into ``dest`` (torchvision's downloader, md5-checked)."""
    from torchvision.datasets.utils import download_and_extract_archive

    log.info("downloading IMDB to %s", dest)
    download_and_extract_archive(IMDB_URL, str(dest), md5=IMDB_MD5, remove_finished=True)


def download_sst(dest: Path) -> None:
    """Fetch and extract the SST PTB trees (``trees/{train,dev,test}.txt``) into ``dest``."""
    from torchvision.datasets.utils import download_and_extract_archive

    log.info("downloading SST to %s", dest)
    download_and_extract_archive(SST_URL, str(dest), remove_finished=True)


def download_trec(dest: Path) -> None:
    """Fetch the two TREC label files into ``dest/trec``."""
    from torchvision.datasets.utils import download_url

    log.info("downloading TREC to %s", dest / "trec")
    for fname, url in TREC_URLS.items():
        download_url(url, str(dest / "trec"), filename=fname)
