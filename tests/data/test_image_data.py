"""ImageData validation, digits loading, from_tensors and from_datasets."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from fastdistill.data import ImageData, from_datasets, from_tensors, load_image_dataset


def _data(**overrides: object) -> ImageData:
    kw: dict[str, object] = {
        "name": "t",
        "train_x": torch.randn(6, 1, 4, 4),
        "train_y": torch.tensor([0, 1, 2, 0, 1, 2]),
        "test_x": torch.randn(3, 1, 4, 4),
        "test_y": torch.tensor([0, 1, 2]),
        "num_classes": 3,
        "class_names": ["a", "b", "c"],
        "mean": (0.5,),
        "std": (0.25,),
    }
    kw.update(overrides)
    return ImageData(**kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------ digits


def test_digits_shapes_split_and_normalisation() -> None:
    d = load_image_dataset("digits")
    assert d.name == "digits"
    assert d.train_x.shape == (1347, 1, 8, 8) and d.test_x.shape == (450, 1, 8, 8)
    assert (d.num_train, d.num_test, d.in_channels, d.image_size) == (1347, 450, 1, (8, 8))
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert d.num_classes == 10 and d.class_names == [str(i) for i in range(10)]
    assert sorted(d.train_y.unique().tolist()) == list(range(10))
    assert sorted(d.test_y.unique().tolist()) == list(range(10))
    assert abs(d.train_x.mean().item()) < 1e-4
    assert abs(d.train_x.std(unbiased=False).item() - 1.0) < 1e-4
    # stratified: every class has 43..46 test images out of 450
    assert torch.bincount(d.test_y).min() >= 43
    # raw pixel values were /16, so de-normalised images lie in [0, 1]
    raw = d.denormalize(d.train_x, clamp=False)
    assert raw.min() > -1e-5 and raw.max() < 1 + 1e-5


def test_digits_is_deterministic() -> None:
    a, b = load_image_dataset("digits"), load_image_dataset("DIGITS")
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)


def test_digits_resize_to_28() -> None:
    d = load_image_dataset("digits", image_size=28)
    assert d.train_x.shape == (1347, 1, 28, 28) and d.test_x.shape == (450, 1, 28, 28)
    assert d.image_size == (28, 28)
    assert abs(d.train_x.mean().item()) < 1e-4
    assert abs(d.train_x.std(unbiased=False).item() - 1.0) < 1e-4


# ------------------------------------------------------------------ ImageData


def test_denormalize_normalize_round_trip_and_to() -> None:
    d = _data()
    x = torch.rand(2, 1, 4, 4)
    assert torch.allclose(d.denormalize(d.normalize(x)), x, atol=1e-6)
    assert d.denormalize(torch.full((1, 1, 2, 2), 100.0)).max() == 1.0  # clamped for plotting
    assert d.denormalize(torch.full((1, 1, 2, 2), 100.0), clamp=False).max() == 25.5
    assert d.to("cpu") is d
    assert d.to(torch.device("cpu")).train_x.device.type == "cpu"


def test_empty_class_is_named() -> None:
    with pytest.raises(ValueError, match=r"class 2 \('c'\) has no training examples"):
        _data(train_y=torch.tensor([0, 1, 0, 1, 0, 1]))


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"train_x": torch.randn(6, 4, 4)}, r"train_x must be \[N, C, H, W\]"),
        ({"train_x": torch.randn(6, 1, 4, 4).double()}, "train_x must be float32"),
        ({"train_y": torch.tensor([0, 1, 2, 0, 1])}, "6 images but train_y has 5 labels"),
        ({"train_y": torch.tensor([0, 1, 2, 0, 1, 2]).int()}, "train_y must be int64"),
        ({"test_x": torch.randn(3, 3, 4, 4)}, "train images are .* but test images are"),
        ({"test_y": torch.tensor([0, 1, 3])}, r"test_y has labels in \[0, 3\]"),
        ({"class_names": ["a", "b"]}, "2 class_names for num_classes=3"),
        ({"mean": (0.5, 0.5)}, "one value per channel"),
        ({"std": (0.0,)}, "std values must be positive"),
    ],
)
def test_validation_errors(overrides: dict[str, object], pattern: str) -> None:
    with pytest.raises((ValueError, TypeError), match=pattern):
        _data(**overrides)


# ------------------------------------------------------------------ from_tensors


def test_from_tensors_uint8_hw_normalised() -> None:
    g = torch.Generator().manual_seed(0)
    tx = torch.randint(0, 256, (20, 5, 5), dtype=torch.uint8, generator=g)
    ty = torch.arange(20) % 4
    vx = torch.randint(0, 256, (8, 5, 5), dtype=torch.uint8, generator=g)
    vy = torch.arange(8) % 4
    d = from_tensors(tx, ty, vx, vy, class_names=["w", "x", "y", "z"], name="mine")
    assert d.name == "mine" and d.num_classes == 4 and d.class_names == ["w", "x", "y", "z"]
    assert d.train_x.shape == (20, 1, 5, 5) and d.test_x.shape == (8, 1, 5, 5)
    assert abs(d.train_x.mean().item()) < 1e-5
    assert abs(d.train_x.std(unbiased=False).item() - 1.0) < 1e-4
    assert torch.allclose(
        d.denormalize(d.test_x, clamp=False) * 255, vx[:, None].float(), atol=1e-3
    )


def test_from_tensors_float_without_normalisation() -> None:
    tx, vx = torch.rand(6, 3, 4, 4), torch.rand(2, 3, 4, 4)
    d = from_tensors(tx, np.array([0, 1, 2, 0, 1, 2]), vx, [2, 1], normalize=False)
    assert d.num_classes == 3 and d.class_names == ["0", "1", "2"]
    assert d.mean == (0.0, 0.0, 0.0) and d.std == (1.0, 1.0, 1.0)
    assert torch.equal(d.train_x, tx) and torch.equal(d.test_x, vx)
    assert d.train_y.dtype == torch.int64


def test_from_tensors_errors() -> None:
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="looks channels-last"):
        from_tensors(torch.rand(2, 8, 8, 3), y, torch.rand(2, 8, 8, 3), y)
    with pytest.raises(ValueError, match="train images are"):
        from_tensors(torch.rand(2, 8, 8), y, torch.rand(2, 3, 8, 8), y)
    with pytest.raises(TypeError, match="integer class indices"):
        from_tensors(torch.rand(2, 8, 8), y.float(), torch.rand(2, 8, 8), y)
    with pytest.raises(ValueError, match="has no training examples"):
        from_tensors(torch.rand(2, 8, 8), y, torch.rand(2, 8, 8), y, num_classes=3)


# ------------------------------------------------------------------ from_datasets


class _PilDataset(Dataset):
    classes: ClassVar[list[str]] = ["dark", "light"]

    def __init__(self, n: int) -> None:
        self.values = [(i * 37) % 256 for i in range(n)]

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        v = self.values[i]
        return Image.fromarray(np.full((6, 6), v, dtype=np.uint8)), int(v >= 128)


class _TensorDataset(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def test_from_datasets_pil_matches_from_tensors() -> None:
    train, test = _PilDataset(23), _PilDataset(7)
    d = from_datasets(train, test, batch_size=5)
    assert d.class_names == ["dark", "light"]  # taken from train.classes
    assert d.train_x.shape == (23, 1, 6, 6) and d.test_x.shape == (7, 1, 6, 6)
    tx = torch.tensor(train.values, dtype=torch.uint8)[:, None, None, None].expand(23, 1, 6, 6)
    vx = torch.tensor(test.values, dtype=torch.uint8)[:, None, None, None].expand(7, 1, 6, 6)
    ref = from_tensors(tx, (tx[:, 0, 0, 0] >= 128).long(), vx, (vx[:, 0, 0, 0] >= 128).long())
    assert torch.allclose(d.train_x, ref.train_x) and torch.equal(d.train_y, ref.train_y)
    assert torch.allclose(d.test_x, ref.test_x) and d.mean == pytest.approx(ref.mean)


def test_from_datasets_float_tensors() -> None:
    x, y = torch.rand(10, 3, 4, 4), torch.arange(10) % 5
    d = from_datasets(_TensorDataset(x, y), _TensorDataset(x[:4], y[:4]), normalize=False)
    assert torch.equal(d.train_x, x) and torch.equal(d.train_y, y) and d.num_classes == 5
