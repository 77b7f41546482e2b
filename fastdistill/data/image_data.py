"""The in-memory image dataset container and constructors from user tensors or datasets.

Dataset distillation re-reads the real training set thousands of times, so everything is kept
as one normalised float32 tensor per split (no per-item ``Dataset`` overhead, trivially moved to
the GPU once).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from fastdistill.data.protocol import validate_classes, validate_labels

__all__ = ["ImageData", "from_datasets", "from_tensors"]


@dataclass
class ImageData:
    """A classification image dataset held in memory, already normalised.

    ``train_x``/``test_x`` are float32 ``[N, C, H, W]`` normalised per channel with ``mean``/``std``
    (``(x - mean) / std``); ``train_y``/``test_y`` are int64 ``[N]`` labels in
    ``[0, num_classes)``. The constructor validates all of this, because a silently wrong shape
    or an empty class only shows up much later as a meaningless distillation result.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        self.class_names = [str(c) for c in self.class_names]
        self._validate()

    def _validate(self) -> None:
        where = f"ImageData({self.name!r})"
        for split, x, y in (
            ("train", self.train_x, self.train_y),
            ("test", self.test_x, self.test_y),
        ):
            if not isinstance(x, Tensor) or not isinstance(y, Tensor):
                raise TypeError(f"{where}: {split}_x and {split}_y must be torch.Tensor")
            if x.dim() != 4:
                raise ValueError(
                    f"{where}: {split}_x must be [N, C, H, W], got shape {tuple(x.shape)}"
                )
            if x.dtype != torch.float32:
                raise TypeError(f"{where}: {split}_x must be float32, got {x.dtype}")
            if y.dim() != 1:
                raise ValueError(f"{where}: {split}_y must be [N], got shape {tuple(y.shape)}")
            if y.dtype != torch.int64:
                raise TypeError(f"{where}: {split}_y must be int64, got {y.dtype}")
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"{where}: {split}_x has {x.shape[0]} images but {split}_y has "
                    f"{y.shape[0]} labels"
                )
            if x.device != y.device:
                raise ValueError(f"{where}: {split}_x and {split}_y are on different devices")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(
                f"{where}: train images are {tuple(self.train_x.shape[1:])} but test images are "
                f"{tuple(self.test_x.shape[1:])} (C, H, W)"
            )
        if self.train_x.shape[0] == 0:
            raise ValueError(f"{where}: the training split is empty")
        validate_classes(where, self.num_classes, self.class_names)
        c = self.train_x.shape[1]
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(
                f"{where}: mean/std need one value per channel ({c}), got {len(self.mean)} "
                f"and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"{where}: std values must be positive, got {self.std}")
        validate_labels(
            where, self.train_y, self.test_y, self.num_classes, self.class_names, "image"
        )

    @property
    def in_channels(self) -> int:
        """Number of image channels C."""
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """Image height and width (H, W)."""
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])

    @property
    def num_train(self) -> int:
        """Number of training images."""
        return int(self.train_x.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test images."""
        return int(self.test_x.shape[0])

    def denormalize(self, x: Tensor, *, clamp: bool = True) -> Tensor:
        """Undo the normalisation (``x * std + mean``) of ``[..., C, H, W]`` images, for plotting.

        Clamped to [0, 1] by default because distilled images routinely leave the data range.
        """
        shape = (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        out = x * std + mean
        return out.clamp(0.0, 1.0) if clamp else out

    def normalize(self, x: Tensor) -> Tensor:
        """Apply this dataset's normalisation to ``[..., C, H, W]`` images in [0, 1]."""
        shape = (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return (x - mean) / std

    # -- the interface the distillation engine uses (see fastdistill.data.protocol) ---------
    @property
    def binary(self) -> bool:
        """Image tasks here are multi-class (one logit per class)."""
        return False

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one model input, ``(C, H, W)``: the shape of each distilled sample."""
        return tuple(self.train_x.shape[1:])

    def model_inputs(self, x: Tensor) -> Tensor:
        """Stored examples -> what the model consumes (images are stored ready to use)."""
        return x

    def model_kwargs(self) -> dict[str, int]:
        """Keyword arguments that size a registered model for this data."""
        return {"in_channels": self.in_channels, "image_size": self.image_size[0]}

    def describe(self) -> dict[str, Any]:
        """JSON-able description stored with distilled sets (enough to reload the data)."""
        return {
            "kind": "image",
            "name": self.name,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "mean": list(self.mean),
            "std": list(self.std),
            "image_size": list(self.image_size),
            "in_channels": self.in_channels,
        }

    def to(self, device: torch.device | str) -> ImageData:
        """Return a copy with all four tensors on ``device`` (self is returned if already there)."""
        device = torch.device(device)
        if all(_same_device(t.device, device) for t in self._tensors()):
            return self
        return dataclasses.replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
        )

    def _tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.train_x, self.train_y, self.test_x, self.test_y

    def __repr__(self) -> str:
        c, (h, w) = self.in_channels, self.image_size
        return (
            f"ImageData(name={self.name!r}, train={self.num_train}, test={self.num_test}, "
            f"shape=[{c}, {h}, {w}], num_classes={self.num_classes}, "
            f"device={self.train_x.device})"
        )


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    return b.index is None or a.index == b.index


def _as_images(x: Any, what: str) -> Tensor:
    """Images as float32 ``[N, C, H, W]`` in their natural scale (uint8 is mapped to [0, 1])."""
    t = torch.as_tensor(x) if not isinstance(x, Tensor) else x
    if t.dim() == 3:
        t = t.unsqueeze(1)
    if t.dim() != 4:
        raise ValueError(f"{what} must be [N, H, W] or [N, C, H, W], got shape {tuple(t.shape)}")
    if t.shape[1] > 4 and t.shape[-1] in (1, 3, 4):
        raise ValueError(
            f"{what} has shape {tuple(t.shape)}, which looks channels-last [N, H, W, C]; "
            "pass x.permute(0, 3, 1, 2) instead"
        )
    if t.dtype == torch.uint8:
        return t.to(torch.float32).div_(255.0)
    if not t.is_floating_point():
        raise TypeError(f"{what} must be uint8 or floating point, got {t.dtype}")
    return t.to(torch.float32)


def _as_labels(y: Any, what: str) -> Tensor:
    t = torch.as_tensor(y) if not isinstance(y, Tensor) else y
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{what} must hold integer class indices, got {t.dtype}")
    if t.dim() > 1:
        raise ValueError(f"{what} must be [N] class indices, got shape {tuple(t.shape)}")
    return t.reshape(-1).to(torch.int64)


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``[N, C, H, W]`` images (float64 accumulation)."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).to(torch.float64)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=False)
    return tuple(mean.tolist()), tuple(std.clamp_min(1e-8).tolist())


def from_tensors(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    name: str = "custom",
    normalize: bool = True,
) -> ImageData:
    """Build an :class:`ImageData` from user tensors (or arrays).

    Images may be uint8 (mapped to [0, 1]) or float, ``[N, H, W]`` (one channel) or
    ``[N, C, H, W]``. With ``normalize=True`` both splits are normalised with the per-channel
    mean/std of the training split; otherwise they are used as given and mean=0, std=1 are
    recorded. ``num_classes`` defaults to ``len(class_names)`` or ``max(train_y) + 1``.
    """
    tx = _as_images(train_x, "train_x")
    vx = _as_images(test_x, "test_x")
    ty = _as_labels(train_y, "train_y")
    vy = _as_labels(test_y, "test_y")
    if num_classes is None:
        if class_names is not None:
            num_classes = len(class_names)
        elif ty.numel():
            num_classes = int(max(int(ty.max()), int(vy.max()) if vy.numel() else -1)) + 1
        else:
            num_classes = 0
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    c = tx.shape[1]
    if normalize and tx.shape[0] > 0:
        mean, std = channel_stats(tx)
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        tx = (tx - m.to(tx.device)) / s.to(tx.device)
        if vx.shape[1] == c:
            vx = (vx - m.to(vx.device)) / s.to(vx.device)
    else:
        mean, std = (0.0,) * c, (1.0,) * c
    return ImageData(
        name=name,
        train_x=tx.contiguous(),
        train_y=ty,
        test_x=vx.contiguous(),
        test_y=vy,
        num_classes=int(num_classes),
        class_names=names,
        mean=mean,
        std=std,
    )


def _collate_images(batch: list[tuple[Any, Any]]) -> tuple[Tensor, Tensor]:
    """Stack (image, label) pairs where the image is a tensor, a PIL image or an array."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    images: list[Tensor] = []
    labels: list[int] = []
    for item in batch:
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError(
                f"dataset items must be (image, label) pairs, got {type(item).__name__}"
            )
        img, label = item[0], item[1]
        if isinstance(img, Image.Image):
            img = pil_to_tensor(img)
        elif isinstance(img, np.ndarray):
            img = torch.from_numpy(img)
        elif not isinstance(img, Tensor):
            raise TypeError(
                f"dataset images must be tensors, arrays or PIL images, got {type(img).__name__}"
            )
        if img.dim() == 2:
            img = img.unsqueeze(0)
        images.append(img)
        labels.append(int(label))
    shapes = {tuple(i.shape) for i in images}
    if len(shapes) > 1:
        raise ValueError(
            f"dataset images have different shapes {sorted(shapes)}; resize them in the "
            "dataset's transform"
        )
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def _materialise(ds: Dataset, batch_size: int, num_workers: int) -> tuple[Tensor, Tensor]:
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate_images,
    )
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ValueError("cannot materialise an empty dataset")
    dtypes = {x.dtype for x in xs}
    if len(dtypes) > 1:
        xs = [x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else x for x in xs]
    return torch.cat(xs), torch.cat(ys)


def from_datasets(
    train: Dataset,
    test: Dataset,
    *,
    batch_size: int = 512,
    num_workers: int = 0,
    **kw: Any,
) -> ImageData:
    """Materialise two map-style datasets of ``(image, int label)`` into an :class:`ImageData`.

    Images may be tensors, arrays or PIL images (converted to uint8 tensors). They are read
    once through a ``DataLoader`` with batch collation; ``kw`` goes to :func:`from_tensors`
    (``class_names`` defaults to the training dataset's ``classes`` attribute if it has one).
    """
    if "class_names" not in kw and "num_classes" not in kw:
        classes = getattr(train, "classes", None)
        if isinstance(classes, (list, tuple)) and classes:
            kw["class_names"] = [str(c) for c in classes]
    tx, ty = _materialise(train, batch_size, num_workers)
    vx, vy = _materialise(test, batch_size, num_workers)
    if tx.dtype != vx.dtype:
        tx = tx.to(torch.float32) / 255.0 if tx.dtype == torch.uint8 else tx
        vx = vx.to(torch.float32) / 255.0 if vx.dtype == torch.uint8 else vx
    return from_tensors(tx, ty, vx, vy, **kw)
