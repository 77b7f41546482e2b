"""Your own data by name: an image folder (``imagefolder:PATH``) or a CSV/TSV/JSONL text table
(``csv:PATH``, ``tsv:PATH``, ``jsonl:PATH``), usable wherever a dataset name is
(``--set dataset=imagefolder:/data/pets``).

* Images: ``PATH/<class>/*.png|jpg|...`` as torchvision's ``ImageFolder`` reads it (classes
  are the sorted folder names). With ``PATH/train/<class>/`` and ``PATH/test/<class>/`` those
  are the splits; otherwise a stratified 20% of each class (seeded, always the same) is the
  test split. All images must have one size unless ``image_size`` resizes them; grayscale
  folders stay 1-channel, anything else is read as RGB. Normalised with the training split's
  per-channel mean/std.
* Text: a table with a header row naming ``label`` and ``text`` columns (any order). A folder
  with ``train.csv``/``test.csv`` (or ``.tsv``/``.jsonl``) gives the splits; a single file is
  split 80/20 per class like the images. Needs ``vectors`` (a name or a GloVe text file).

The checks that matter fail early with one line: missing folders, fewer than two classes, an
empty class, a class too small to split, test classes unknown to training, mixed image sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

IMAGE_PREFIX = "imagefolder:"
TEXT_PREFIXES = ("csv:", "tsv:", "jsonl:")
TEST_FRACTION = 0.2
SPLIT_SEED = 0
_GRAY_MODES = ("1", "L", "I", "I;16", "F")


def is_own_image(name: str) -> bool:
    return name.strip().lower().startswith(IMAGE_PREFIX)


def is_own_text(name: str) -> bool:
    return name.strip().lower().startswith(TEXT_PREFIXES)


def _split_name(name: str) -> tuple[str, Path]:
    prefix, _, rest = name.strip().partition(":")
    if not rest:
        raise ValueError(f"dataset {name!r}: give a path after {prefix}: (e.g. {prefix}:/data/x)")
    return prefix.lower(), Path(rest).expanduser()


def _stratified_split(labels: Sequence[int], where: str, names: Sequence[str]) -> tuple[list, list]:
    counts = torch.bincount(torch.as_tensor(list(labels)), minlength=len(names))
    small = [i for i, c in enumerate(counts.tolist()) if c < 2]
    if small:
        i = small[0]
        raise ValueError(
            f"{where}: class {names[i]!r} has {int(counts[i])} example(s); every class needs at "
            "least 2 to hold out a test split (or give separate train and test data)"
        )
    # per class: a seeded 20% (at least one example) held out, so every class is in both splits
    gen = torch.Generator().manual_seed(SPLIT_SEED)
    ids = torch.as_tensor(list(labels))
    train: list[int] = []
    test: list[int] = []
    for c in range(len(names)):
        members = torch.nonzero(ids == c).flatten()
        members = members[torch.randperm(len(members), generator=gen)].tolist()
        k = max(1, round(TEST_FRACTION * len(members)))
        test += members[:k]
        train += members[k:]
    return sorted(train), sorted(test)


# -- images -----------------------------------------------------------------------------------
def _class_folders(root: Path, where: str) -> list[Path]:
    if not root.is_dir():
        raise ValueError(f"{where}: {root} is not a folder")
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
    folders = [p for p in folders if not p.name.startswith(".")]
    if len(folders) < 2:
        raise ValueError(
            f"{where}: {root} has {len(folders)} class folder(s); need at least 2, laid out as "
            f"{root}/<class>/<image>.png"
        )
    return folders


def _image_files(folder: Path, where: str) -> list[Path]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
    )
    if not files:
        raise ValueError(
            f"{where}: class {folder.name!r} ({folder}) has no images "
            f"({', '.join(IMG_EXTENSIONS[:4])}, ...); remove the folder or add images"
        )
    return files


def _read_images(files: list[Path], where: str, image_size: int | None) -> Tensor:
    """uint8 ``[N, C, H, W]``: 1 channel when every image is grayscale, else RGB."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    images, modes = [], set()
    first: tuple[tuple[int, int], Path] | None = None
    for path in files:
        try:
            with Image.open(path) as img:
                img.load()
                modes.add("L" if img.mode in _GRAY_MODES else "RGB")
                images.append(img.copy())
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"{where}: cannot read image {path} ({err})") from None
        size = images[-1].size
        if first is None:
            first = (size, path)
        elif size != first[0] and image_size is None:
            (w0, h0), p0 = first
            raise ValueError(
                f"{where}: images have different sizes, {w0}x{h0} ({p0}) and {size[0]}x"
                f"{size[1]} ({path}); resize them or pass image_size (--set image_size=N)"
            )
    mode = "L" if modes == {"L"} else "RGB"
    out = []
    for img in images:
        img = img.convert(mode)
        if image_size is not None and img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.BILINEAR)
        a = np.asarray(img, dtype=np.uint8)
        out.append(torch.from_numpy(a.copy()).reshape(a.shape[0], a.shape[1], -1).permute(2, 0, 1))
    return torch.stack(out)


def _read_split(root: Path, where: str, image_size: int | None) -> tuple[Tensor, Tensor, list]:
    folders = _class_folders(root, where)
    files, labels = [], []
    for i, folder in enumerate(folders):
        found = _image_files(folder, where)
        files += found
        labels += [i] * len(found)
    x = _read_images(files, where, image_size)
    return x, torch.tensor(labels, dtype=torch.int64), [f.name for f in folders]


def load_image_folder(name: str, *, image_size: int | None = None) -> Any:
    """``imagefolder:PATH`` as an :class:`~fastdistill.data.ImageData` (see the module)."""
    from fastdistill.data.image_data import from_tensors

    _, root = _split_name(name)
    root = root.resolve()
    where = f"dataset {IMAGE_PREFIX}{root}"
    if not root.is_dir():
        raise ValueError(f"{where}: no such folder")
    if image_size is not None and image_size < 1:
        raise ValueError(f"{where}: image_size must be >= 1, got {image_size}")
    if (root / "train").is_dir() and (root / "test").is_dir():
        tx, ty, names = _read_split(root / "train", where, image_size)
        vx, vy, test_names = _read_split(root / "test", where, image_size)
        if test_names != names:
            extra = sorted(set(test_names) ^ set(names))
            raise ValueError(
                f"{where}: train/ and test/ have different class folders (not in both: "
                f"{', '.join(extra) or 'the same names in another order'})"
            )
        if tx.shape[1:] != vx.shape[1:]:
            raise ValueError(
                f"{where}: train images are {tuple(tx.shape[1:])} and test images "
                f"{tuple(vx.shape[1:])} (C, H, W); pass image_size (--set image_size=N)"
            )
    else:
        x, y, names = _read_split(root, where, image_size)
        train, test = _stratified_split(y.tolist(), where, names)
        tx, ty, vx, vy = x[train], y[train], x[test], y[test]
    return from_tensors(tx, ty, vx, vy, class_names=names, name=f"{IMAGE_PREFIX}{root}")


# -- text -------------------------------------------------------------------------------------
def _table_in(folder: Path, split: str) -> Path | None:
    for suffix in (".csv", ".tsv", ".jsonl"):
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    return None


def load_text_table(
    name: str,
    *,
    seq_len: int | None,
    vectors: Any,
    max_vocab: int | None = None,
    min_freq: int = 1,
) -> Any:
    """``csv:PATH`` / ``tsv:PATH`` / ``jsonl:PATH`` as a :class:`~fastdistill.data.TextData`."""
    from fastdistill.data import text_readers as readers
    from fastdistill.data.text import from_texts, infer_class_names

    prefix, path = _split_name(name)
    path = path.resolve()
    where = f"dataset {prefix}:{path}"
    fmt = prefix
    if path.is_dir():
        train_file, test_file = _table_in(path, "train"), _table_in(path, "test")
        if train_file is None or test_file is None:
            raise ValueError(
                f"{where}: a folder needs train.csv and test.csv (or .tsv/.jsonl); or point at "
                "one file to split 80/20"
            )
        fmt_of = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}
        tr = readers.read_table(train_file, format=fmt_of[train_file.suffix])
        te = readers.read_table(test_file, format=fmt_of[test_file.suffix])
        names = infer_class_names(tr.labels)
        unknown = sorted(set(te.labels) - set(names))
        if unknown:
            raise ValueError(f"{where}: test labels {unknown[:5]} do not occur in training")
        train_texts, train_labels = tr.texts, tr.labels
        test_texts, test_labels = te.texts, te.labels
    elif path.is_file():
        table = readers.read_table(path, format=fmt)
        names = infer_class_names(table.labels)
        index = {c: i for i, c in enumerate(names)}
        ids = [index[lab] for lab in table.labels]
        if len(names) >= 2:
            train, test = _stratified_split(ids, where, names)
        else:
            train, test = [], []
        train_texts = [table.texts[i] for i in train]
        train_labels = [table.labels[i] for i in train]
        test_texts = [table.texts[i] for i in test]
        test_labels = [table.labels[i] for i in test]
    else:
        raise ValueError(f"{where}: no such file or folder")
    if len(names) < 2:
        raise ValueError(f"{where}: found {len(names)} class(es) {names}; need at least 2")
    empty = sum(1 for t in train_texts if not t.strip())
    if empty:
        raise ValueError(f"{where}: {empty} training row(s) have empty text; remove them")
    source = {"loader": "own_text", "name": f"{prefix}:{path}", "seq_len": seq_len,
              "vectors": str(vectors), "max_vocab": max_vocab, "min_freq": min_freq}  # fmt: skip
    return from_texts(
        train_texts,
        train_labels,
        test_texts,
        test_labels,
        class_names=names,
        seq_len=seq_len,
        vectors=vectors,
        max_vocab=max_vocab,
        min_freq=min_freq,
        name=f"{prefix}:{path}",
        source=source,
    )


def reload_own_text(source: dict[str, Any]) -> Any:
    """Load again a table described by :func:`load_text_table`'s ``source`` record."""
    src = dict(source)
    src.pop("loader", None)
    name = src.pop("name")
    return load_text_table(name, **src)
