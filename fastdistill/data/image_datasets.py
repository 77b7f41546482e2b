"""Loading the standard image benchmarks into :class:`ImageData`.

Everything is read from local copies when possible (``root``); downloading only happens when the
caller passes ``download=True``. The CIFAR-10 image-folder copy (JPEGs in a tarball) is extracted
once and its decoded pixels cached as a safetensors file, because decoding 60,000 JPEGs on every
run would dominate short experiments.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .image_data import ImageData, channel_stats
from .paths import default_cache_dir, default_data_root

__all__ = [
    "CIFAR10_CLASSES",
    "IMAGE_DATASETS",
    "load_image_dataset",
]

log = logging.getLogger(__name__)

#: Names accepted by :func:`load_image_dataset`.
IMAGE_DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10")

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# Standard normalisation constants. CIFAR-10's are those of the original dataset-distillation
# code (per-pixel std over the training set), so results stay comparable with it.
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)

CIFAR10_TARBALL = "CIFAR-10-images-jpeg.tar.gz"
_CACHE_FORMAT = "fastdistill-imagefolder-v1"
_CHUNK = 4096


def load_image_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    download: bool = False,
    image_size: int | None = None,
    cache_dir: str | Path | None = None,
) -> ImageData:
    """Load a benchmark image dataset, normalised, as an :class:`ImageData`.

    ``name`` is one of :data:`IMAGE_DATASETS`. ``root`` defaults to :func:`default_data_root`
    (``digits`` needs none: it ships with scikit-learn). ``download`` is passed to torchvision
    and only used when the local files are missing. ``image_size`` resizes both splits to a
    square (bilinear, antialiased) before normalising. ``cache_dir`` (default
    :func:`default_cache_dir`) receives the extracted CIFAR-10 image folder and pixel cache.
    """
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in IMAGE_DATASETS:
        raise ValueError(
            f"unknown image dataset {name!r}; known datasets: {', '.join(IMAGE_DATASETS)}"
        )
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size}")
    if key == "digits":
        return _load_digits(image_size)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    data_root = _resolve_root(key, root, download, cache)
    if key in ("mnist", "fashion-mnist"):
        return _load_mnist_like(key, data_root, download, image_size)
    return _load_cifar10(data_root, download, image_size, cache)


# --------------------------------------------------------------------------------------------
# shared helpers


def _resolve_root(key: str, root: str | Path | None, download: bool, cache: Path) -> Path:
    if root is not None:
        path = Path(root).expanduser()
        if not path.is_dir() and not download:
            raise FileNotFoundError(
                f"{key}: data root {path} does not exist (download=False); pass an existing "
                "folder (CLI --data-root) or allow the download (CLI --download)"
            )
        return path
    found = default_data_root()
    if found is not None:
        return found
    if download:
        return cache / "datasets"
    raise FileNotFoundError(
        f"{key}: no data root given and none found (checked $FASTDISTILL_DATA_ROOT, "
        "./shared/data, ../shared/data); pass root=..., set FASTDISTILL_DATA_ROOT, or pass "
        "download=True (download=False now)"
    )


def _prepare(
    x: Tensor,
    image_size: int | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> Tensor:
    """uint8 or [0, 1] float ``[N, C, H, W]`` -> resized float32, normalised if mean/std given.

    Works in chunks so a uint8 dataset never exists twice in float32 at full size.
    """
    n, c, h, w = x.shape
    size = (image_size, image_size) if image_size is not None else (h, w)
    out = torch.empty((n, c, *size), dtype=torch.float32)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) if mean is not None else None
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) if std is not None else None
    for i in range(0, n, _CHUNK):
        chunk = x[i : i + _CHUNK]
        chunk = chunk.to(torch.float32) / 255.0 if chunk.dtype == torch.uint8 else chunk.float()
        if size != (h, w):
            chunk = F.interpolate(
                chunk, size=size, mode="bilinear", align_corners=False, antialias=True
            )
        if m is not None and s is not None:
            chunk = (chunk - m) / s
        out[i : i + _CHUNK] = chunk
    return out


def _build(
    name: str,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    class_names: Sequence[str],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    image_size: int | None,
) -> ImageData:
    tx = _prepare(train[0], image_size, mean, std)
    vx = _prepare(test[0], image_size, mean, std)
    return ImageData(
        name=name,
        train_x=tx,
        train_y=train[1].to(torch.int64),
        test_x=vx,
        test_y=test[1].to(torch.int64),
        num_classes=len(class_names),
        class_names=list(class_names),
        mean=mean,
        std=std,
    )


# --------------------------------------------------------------------------------------------
# digits (scikit-learn)


def _load_digits(image_size: int | None) -> ImageData:
    """sklearn's 1,797 8x8 digits: fixed stratified 1,347/450 split, train-set statistics."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32) / 16.0
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=450,
        random_state=0,
        stratify=labels.numpy(),
    )
    tr, te = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    tx = _prepare(images[tr].unsqueeze(1), image_size, None, None)
    vx = _prepare(images[te].unsqueeze(1), image_size, None, None)
    mean, std = channel_stats(tx)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ImageData(
        name="digits",
        train_x=(tx - m) / s,
        train_y=labels[tr],
        test_x=(vx - m) / s,
        test_y=labels[te],
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        mean=mean,
        std=std,
    )


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (torchvision idx layout)

_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _load_mnist_like(key: str, root: Path, download: bool, image_size: int | None) -> ImageData:
    from torchvision.datasets import MNIST, FashionMNIST

    cls = MNIST if key == "mnist" else FashionMNIST
    raw = root / cls.__name__ / "raw"
    missing = [raw / f for f in _MNIST_FILES if not (raw / f).is_file()]
    if missing and not download:
        raise FileNotFoundError(
            f"{key}: missing {', '.join(p.name for p in missing)} in {raw} (download=False). "
            f"Expected torchvision's layout <root>/{cls.__name__}/raw/<uncompressed idx files> "
            f"with root={root}{_mnist_layout_hint(root, cls.__name__)}; pass download=True to "
            "fetch it"
        )
    if not missing:
        for prefix in ("train", "t10k"):
            _check_idx_pair(
                key, raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
            )
    train = cls(str(root), train=True, download=download)
    test = cls(str(root), train=False, download=download)
    if key == "mnist":
        names = [str(i) for i in range(10)]
        mean, std = MNIST_MEAN, MNIST_STD
    else:
        names = list(FashionMNIST.classes)
        mean, std = FASHION_MNIST_MEAN, FASHION_MNIST_STD
    return _build(
        key,
        (train.data.unsqueeze(1), train.targets),
        (test.data.unsqueeze(1), test.targets),
        names,
        mean,
        std,
        image_size,
    )


def _idx_shape(key: str, path: Path, ndim: int) -> tuple[int, ...]:
    """The shape an uncompressed idx file declares, after checking that its size fits it."""
    fix = "delete it and fetch it again (download=True, CLI --download)"
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4 + 4 * ndim)
    if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] != 0x08 or head[3] != ndim:
        raise ValueError(
            f"{key}: {path} is not an uncompressed idx file of {ndim}-d uint8 data (magic "
            f"{head[:4].hex() or 'missing'}, expected 000008{ndim:02x}); {fix}"
        )
    if len(head) < 4 + 4 * ndim:
        raise ValueError(f"{key}: {path} is truncated ({size} bytes, inside its header); {fix}")
    shape = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    want = 4 + 4 * ndim + math.prod(shape)
    if size != want:
        what = "truncated" if size < want else "corrupt (longer than its header says)"
        raise ValueError(
            f"{key}: {path} is {what}: {size} bytes where its header "
            f"{'x'.join(map(str, shape))} needs {want}; {fix}"
        )
    return shape


def _check_idx_pair(key: str, images: Path, labels: Path) -> None:
    """Validate an images/labels idx pair before torchvision reads it (a truncated file would
    otherwise fail deep inside with a reshape error)."""
    n, h, w = _idx_shape(key, images, 3)
    (m,) = _idx_shape(key, labels, 1)
    if n != m:
        raise ValueError(
            f"{key}: {images} holds {n} images but {labels} holds {m} labels; one of them is "
            "corrupt (delete both and fetch them again)"
        )
    if n == 0 or h == 0 or w == 0:
        raise ValueError(f"{key}: {images} holds no images ({n}x{h}x{w}); fetch it again")


def _mnist_layout_hint(root: Path, folder: str) -> str:
    """Point out the usual mistake of passing the raw folder (or its parent) as root."""
    probe = _MNIST_FILES[0]
    for cand, fix in ((root, root.parent.parent), (root / "raw", root.parent)):
        if (cand / probe).is_file():
            return f" (wrong layout: the idx files are in {cand}; try root={fix})"
    if (root / folder / probe).is_file():
        return f" (wrong layout: the idx files are in {root / folder}, not in its raw/ subfolder)"
    return ""


# --------------------------------------------------------------------------------------------
# CIFAR-10


def _load_cifar10(root: Path, download: bool, image_size: int | None, cache: Path) -> ImageData:
    pickle_dir = root / "cifar-10-batches-py"
    folder = root / "cifar10"
    tarball = folder / CIFAR10_TARBALL
    if pickle_dir.is_dir():
        train, test = _cifar10_torchvision(root, download)
    elif (folder / "train").is_dir() and (folder / "test").is_dir():
        train, test = _cached_image_folder(folder, cache, CIFAR10_CLASSES)
    elif tarball.is_file():
        train, test = _cached_image_folder(tarball, cache, CIFAR10_CLASSES)
    elif download:
        train, test = _cifar10_torchvision(root, download)
    else:
        raise FileNotFoundError(
            f"cifar10: none of {pickle_dir} (torchvision pickle batches), {folder}/train + "
            f"{folder}/test (image folders) or {tarball} exists (download=False); pass "
            "download=True to fetch the pickle version"
        )
    return _build("cifar10", train, test, CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, image_size)


def _cifar10_torchvision(root: Path, download: bool) -> tuple[tuple[Tensor, Tensor], ...]:
    from torchvision.datasets import CIFAR10

    out = []
    for train in (True, False):
        ds = CIFAR10(str(root), train=train, download=download)
        if list(ds.classes) != list(CIFAR10_CLASSES):
            raise ValueError(f"cifar10: unexpected class list {ds.classes} in {root}")
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        out.append((x, torch.as_tensor(ds.targets, dtype=torch.int64)))
    return tuple(out)


def _source_key(source: Path) -> str:
    """Short hash identifying a tarball or image folder, so a changed source is re-read."""
    source = source.resolve()
    parts = [_CACHE_FORMAT, str(source)]
    if source.is_file():
        st = source.stat()
        parts += [str(st.st_size), str(st.st_mtime_ns)]
    else:
        for split in ("train", "test"):
            d = source / split
            parts.append(f"{split}:{d.stat().st_mtime_ns}")
            parts += [f"{c.name}:{c.stat().st_mtime_ns}" for c in sorted(d.iterdir()) if c.is_dir()]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def _cached_image_folder(
    source: Path, cache: Path, classes: Sequence[str]
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Decoded uint8 train/test tensors of a ``{train,test}/<class>/*`` folder or tarball.

    The first call extracts a tarball into ``cache`` and writes the pixels to a safetensors file
    there; later calls only read that file.
    """
    key = _source_key(source)
    cache_file = cache / f"cifar10-images-{key}.safetensors"
    cached = _read_pixel_cache(cache_file, classes)
    if cached is not None:
        log.info("cifar10: loaded decoded images from %s", cache_file)
        return cached
    folder = source if source.is_dir() else _extract_once(source, cache / f"cifar10-images-{key}")
    train = _read_image_folder_split(folder / "train", classes)
    test = _read_image_folder_split(folder / "test", classes)
    if train[0].shape[1:] != test[0].shape[1:]:
        raise ValueError(
            f"cifar10: train images are {tuple(train[0].shape[1:])} but test images are "
            f"{tuple(test[0].shape[1:])} in {folder}"
        )
    _write_pixel_cache(cache_file, train, test, classes, source)
    return train, test


def _read_pixel_cache(
    path: Path, classes: Sequence[str]
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != _CACHE_FORMAT or json.loads(meta["classes"]) != list(classes):
            raise ValueError("unexpected metadata")
        t = load_file(str(path))
        return (t["train_x"], t["train_y"]), (t["test_x"], t["test_y"])
    except (OSError, ValueError, KeyError, SafetensorError) as exc:  # rebuilt, never trusted
        log.warning("ignoring unreadable cache %s (%s); rebuilding it", path, exc)
        return None


def _write_pixel_cache(
    path: Path,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    classes: Sequence[str],
    source: Path,
) -> None:
    from safetensors.torch import save_file

    tensors = {
        "train_x": train[0].contiguous(),
        "train_y": train[1].contiguous(),
        "test_x": test[0].contiguous(),
        "test_y": test[1].contiguous(),
    }
    meta = {"format": _CACHE_FORMAT, "classes": json.dumps(list(classes)), "source": str(source)}
    _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temporary file in the same folder and ``os.replace`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        _default_permissions(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _default_permissions(path: Path) -> None:
    """Give a temp file or folder the permissions a plain create would have.

    mkstemp/mkdtemp use 0600/0700, which would make a shared cache unreadable to other users.
    """
    umask = os.umask(0)
    os.umask(umask)
    path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _has_splits(d: Path) -> bool:
    return (d / "train").is_dir() and (d / "test").is_dir()


def _extract_once(tarball: Path, final: Path) -> Path:
    """Extract ``tarball`` to ``final`` atomically (temp folder, then ``os.replace``)."""
    if _has_splits(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        log.info("extracting %s to %s", tarball, final)
        _safe_extractall(tarball, tmp)
        inner: Path | None = tmp if _has_splits(tmp) else None
        if inner is None:
            subdirs = [d for d in tmp.iterdir() if d.is_dir()]
            if len(subdirs) == 1 and _has_splits(subdirs[0]):
                inner = subdirs[0]
        if inner is None:
            raise ValueError(
                f"cifar10: wrong layout in {tarball}: expected train/ and test/ folders (at the "
                "top level or inside a single folder), each with one sub-folder per class"
            )
        _default_permissions(inner)
        try:
            os.replace(inner, final)
        except OSError:
            if not _has_splits(final):  # not just a concurrent run finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _safe_extractall(tarball: Path, dest: Path) -> None:
    """Extract without letting members escape ``dest`` (absolute paths, ``..``, links)."""
    with tarfile.open(tarball, "r:*") as tf:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
            tf.extractall(dest, filter="data")
            return
        members = []
        for m in tf.getmembers():
            parts = Path(m.name).parts
            if Path(m.name).is_absolute() or ".." in parts or not (m.isfile() or m.isdir()):
                raise ValueError(f"refusing to extract unsafe tar member {m.name!r} of {tarball}")
            members.append(m)
        tf.extractall(dest, members=members)  # members checked above


def _read_image_folder_split(split_dir: Path, classes: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Decode ``split_dir/<class>/*`` with ImageFolder into uint8 ``[N, 3, H, W]`` and labels."""
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor

    try:
        ds = ImageFolder(str(split_dir), transform=pil_to_tensor)
    except FileNotFoundError as exc:
        raise ValueError(f"cifar10: wrong layout in {split_dir}: {exc}") from exc
    if list(ds.classes) != list(classes):
        raise ValueError(
            f"cifar10: wrong layout in {split_dir}: class folders {ds.classes}, expected "
            f"{list(classes)}"
        )
    n = len(ds)
    workers = min(4, os.cpu_count() or 1) if n >= 5000 else 0
    loader = DataLoader(ds, batch_size=1000, num_workers=workers, collate_fn=_stack_same_size)
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def _stack_same_size(batch: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    shapes = {tuple(x.shape) for x, _ in batch}
    if len(shapes) != 1:
        raise ValueError(f"cifar10: images of different sizes {sorted(shapes)} in one folder")
    return torch.stack([x for x, _ in batch]), torch.tensor([y for _, y in batch])
