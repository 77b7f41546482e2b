"""load_image_dataset: real MNIST, CIFAR-10 image-folder tarballs with caching, errors."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastdistill.data.image_datasets as imds
from fastdistill.data import (
    CIFAR10_CLASSES,
    IMAGE_DATASETS,
    default_cache_dir,
    default_data_root,
    load_image_dataset,
)

_SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
N_TRAIN, N_TEST, SIZE = 3, 2, 8


def _pixel(split: str, cls: int, i: int) -> tuple[int, int, int]:
    """A distinct constant colour per image, so decoded pixels can be checked exactly."""
    return (cls * 20 + i, 200 - cls * 10, 7 * i + (100 if split == "test" else 0))


def _png(rgb: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((SIZE, SIZE, 3), rgb, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _write_tarball(
    path: Path, prefix: str = "", classes: tuple[str, ...] = CIFAR10_CLASSES
) -> Path:
    """A tiny CIFAR-10-like `{train,test}/<class>/NNNN.png` tarball (plus a README)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        _add(tf, prefix + "README.md", b"tiny test copy\n")
        for split, n in (("train", N_TRAIN), ("test", N_TEST)):
            for c, cls in enumerate(classes):
                for i in range(n):
                    _add(tf, f"{prefix}{split}/{cls}/{i:04d}.png", _png(_pixel(split, c, i)))
    return path


def _expected(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageFolder order: classes alphabetically, then files by name."""
    pix = [_pixel(split, c, i) for c in range(10) for i in range(n)]
    x = torch.tensor(pix, dtype=torch.float32)[:, :, None, None].expand(-1, 3, SIZE, SIZE) / 255
    y = torch.arange(10).repeat_interleave(n)
    return x, y


def _check_tiny(d: object) -> None:
    assert d.name == "cifar10" and d.class_names == list(CIFAR10_CLASSES)  # type: ignore[attr-defined]
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x, y = _expected(split, n)
        got_x, got_y = getattr(d, f"{split}_x"), getattr(d, f"{split}_y")
        assert got_x.shape == (10 * n, 3, SIZE, SIZE)
        assert torch.equal(got_y, y)
        assert torch.allclose(d.denormalize(got_x, clamp=False), x, atol=1e-5)  # type: ignore[attr-defined]


def _no_temp_leftovers(cache: Path) -> None:
    assert not [p.name for p in cache.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ errors


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ValueError, match="unknown image dataset 'svhn'.*digits, mnist"):
        load_image_dataset("svhn")
    assert IMAGE_DATASETS == ("digits", "mnist", "fashion-mnist", "cifar10")


def test_missing_mnist_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"MNIST/raw \(download=False\)") as exc:
        load_image_dataset("mnist", tmp_path)
    assert "train-images-idx3-ubyte" in str(exc.value)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data root .*nowhere does not exist"):
        load_image_dataset("cifar10", tmp_path / "nowhere")


def test_mnist_wrong_layout_hint(tmp_path: Path) -> None:
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="wrong layout"):
        load_image_dataset("mnist", tmp_path)


def test_missing_cifar_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py") as exc:
        load_image_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    msg = str(exc.value)
    assert "CIFAR-10-images-jpeg.tar.gz" in msg and "download=False" in msg


def test_no_root_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imds, "default_data_root", lambda: None)
    with pytest.raises(FileNotFoundError, match="no data root"):
        load_image_dataset("mnist")


def test_default_paths_follow_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FASTDISTILL_DATA_ROOT", str(tmp_path / "d"))
    monkeypatch.setenv("FASTDISTILL_CACHE", str(tmp_path / "c"))
    assert default_data_root() == tmp_path / "d"
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FASTDISTILL_DATA_ROOT")
    monkeypatch.delenv("FASTDISTILL_CACHE")
    monkeypatch.chdir(tmp_path)
    root = default_data_root()
    assert root is None or root.is_dir()
    assert default_cache_dir() == Path.home() / ".cache" / "fastdistill"


# ------------------------------------------------------------------ real MNIST


@pytest.mark.skipif(
    not (_SHARED / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file(),
    reason=f"real MNIST copy not found at {_SHARED / 'MNIST' / 'raw'}",
)
def test_real_mnist() -> None:
    d = load_image_dataset("mnist", _SHARED)
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert d.train_y.shape == (60000,) and d.test_y.shape == (10000,)
    assert d.mean == (0.1307,) and d.std == (0.3081,)
    assert abs(d.train_x.mean().item()) < 1e-3
    assert abs(d.train_x.std().item() - 1.0) < 1e-3
    assert torch.bincount(d.train_y).tolist()[:2] == [5923, 6742]  # the official counts


# ------------------------------------------------------------------ CIFAR-10 image folder


def test_cifar_tarball_extracts_once_and_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_tarball(tmp_path / "data" / "cifar10" / "CIFAR-10-images-jpeg.tar.gz")
    cache = tmp_path / "cache"
    d = load_image_dataset("cifar10", tmp_path / "data", cache_dir=cache)
    _check_tiny(d)
    assert d.mean == imds.CIFAR10_MEAN and d.std == imds.CIFAR10_STD
    assert len(list(cache.glob("cifar10-images-*.safetensors"))) == 1
    assert len([p for p in cache.glob("cifar10-images-*") if p.is_dir()]) == 1
    _no_temp_leftovers(cache)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("second load must come from the pixel cache")

    monkeypatch.setattr(imds, "_read_image_folder_split", fail)
    monkeypatch.setattr(imds, "_extract_once", fail)
    again = load_image_dataset("cifar10", tmp_path / "data", cache_dir=cache)
    assert torch.equal(again.train_x, d.train_x) and torch.equal(again.test_y, d.test_y)


def test_cifar_tarball_with_top_folder_and_resize(tmp_path: Path) -> None:
    _write_tarball(tmp_path / "cifar10" / "CIFAR-10-images-jpeg.tar.gz", prefix="CIFAR-10-images/")
    d = load_image_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache", image_size=4)
    assert d.train_x.shape == (30, 3, 4, 4) and d.test_x.shape == (20, 3, 4, 4)
    x, _ = _expected("train", N_TRAIN)  # constant images stay constant under resizing
    assert torch.allclose(d.denormalize(d.train_x, clamp=False), x[:, :, :4, :4], atol=1e-5)


def test_cifar_extracted_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tarball = _write_tarball(tmp_path / "src.tar.gz")
    imds._safe_extractall(tarball, tmp_path / "data" / "cifar10")
    cache = tmp_path / "cache"
    _check_tiny(load_image_dataset("cifar10", tmp_path / "data", cache_dir=cache))
    assert len(list(cache.glob("*.safetensors"))) == 1
    assert not [p for p in cache.iterdir() if p.is_dir()]  # nothing extracted
    monkeypatch.setattr(imds, "_read_image_folder_split", None)  # must not be called
    _check_tiny(load_image_dataset("cifar10", tmp_path / "data", cache_dir=cache))


def test_cifar_wrong_classes(tmp_path: Path) -> None:
    classes = tuple(c for c in CIFAR10_CLASSES if c != "frog")
    _write_tarball(tmp_path / "cifar10" / "CIFAR-10-images-jpeg.tar.gz", classes=classes)
    with pytest.raises(ValueError, match="wrong layout.*class folders"):
        load_image_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.safetensors"))


def test_cifar_tarball_without_splits(tmp_path: Path) -> None:
    path = tmp_path / "cifar10" / "CIFAR-10-images-jpeg.tar.gz"
    path.parent.mkdir()
    with tarfile.open(path, "w:gz") as tf:
        _add(tf, "images/airplane/0000.png", _png((1, 2, 3)))
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="wrong layout.*train/ and test/"):
        load_image_dataset("cifar10", tmp_path, cache_dir=cache)
    assert list(cache.iterdir()) == []  # the temporary extraction was removed


def test_interrupted_extraction_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_tarball(tmp_path / "cifar10" / "CIFAR-10-images-jpeg.tar.gz")
    cache = tmp_path / "cache"
    real = tarfile.TarFile.extractall

    def interrupted(self: tarfile.TarFile, path: str, **kw: object) -> None:
        (Path(path) / "train").mkdir()
        (Path(path) / "train" / "partial.png").write_bytes(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(tarfile.TarFile, "extractall", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_image_dataset("cifar10", tmp_path, cache_dir=cache)
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(tarfile.TarFile, "extractall", real)
    _check_tiny(load_image_dataset("cifar10", tmp_path, cache_dir=cache))


def test_interrupted_cache_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    _write_tarball(tmp_path / "cifar10" / "CIFAR-10-images-jpeg.tar.gz")
    cache = tmp_path / "cache"

    def half_written(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    with pytest.raises(KeyboardInterrupt):
        load_image_dataset("cifar10", tmp_path, cache_dir=cache)
    assert not list(cache.glob("*.safetensors")) and not list(cache.glob(".*"))


def test_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    _write_tarball(tmp_path / "cifar10" / "CIFAR-10-images-jpeg.tar.gz")
    cache = tmp_path / "cache"
    load_image_dataset("cifar10", tmp_path, cache_dir=cache)
    (cache_file,) = cache.glob("*.safetensors")
    cache_file.write_bytes(b"garbage")
    _check_tiny(load_image_dataset("cifar10", tmp_path, cache_dir=cache))


@pytest.mark.parametrize("has_data_filter", [True, False])
def test_unsafe_tar_member_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, has_data_filter: bool
) -> None:
    if not has_data_filter:  # the fallback for Python versions without tarfile filters
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
        ok = _write_tarball(tmp_path / "ok.tar.gz")
        imds._safe_extractall(ok, tmp_path / "ok")
        assert (tmp_path / "ok" / "train" / "truck" / "0002.png").is_file()
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tf:
        _add(tf, "../escape.txt", b"x")
    with pytest.raises((ValueError, tarfile.TarError)):
        imds._safe_extractall(bad, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
