"""The distilled set: learnable data, labels and step sizes, and its safe on-disk format.

Saved as one safetensors file (tensors) whose header metadata holds JSON (schedule, label
semantics, model and dataset description). Loading never executes code, unlike pickle.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from fastdistill.engine.losses import LabelKind

FORMAT = "fastdistill.distilled/1"
LabelInit = Literal["onehot", "smoothed", "random"]
LABEL_INITS: tuple[str, ...] = ("onehot", "smoothed", "random")


def inverse_softplus(x: float) -> float:
    """``raw`` such that ``softplus(raw) == x`` (x > 0)."""
    if x <= 0:
        raise ValueError(f"step sizes must be positive, got {x}")
    return x + math.log(-math.expm1(-x))


@dataclass
class DistilledSet:
    """``S`` distilled steps of ``N`` examples, replayed for ``epochs`` epochs (``T = S*E``).

    Attributes:
        data: ``[S, N, ...]`` distilled inputs (images, or embedding sequences for text).
        labels: ``[S, N, K]`` label rows, or ``[S, N]`` scalars for binary tasks.
        raw_lrs: ``[T]`` raw step sizes; the step size of inner step t is ``softplus(raw_lrs[t])``.
        classes: ``[S, N]`` class each example was initialised for (plots, hard labels).
        epochs: ``E``; step t uses distilled batch ``t mod S``.
        label_kind: ``soft`` (raw label rows as weights), ``softmax`` or ``binary``.
        learn_labels: False for hard, frozen labels (the original dataset distillation).
        init_weights: ``[P]`` fixed initial weights when distilled for a fixed init, else None.
        meta: JSON-serialisable description (model, dataset, class names, normalisation, config).
    """

    data: Tensor
    labels: Tensor
    raw_lrs: Tensor
    classes: Tensor
    epochs: int
    label_kind: LabelKind = "soft"
    learn_labels: bool = True
    init_weights: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        S, N = self.data.shape[:2]
        if self.labels.shape[:2] != (S, N) or self.classes.shape != (S, N):
            raise ValueError(
                f"data {tuple(self.data.shape)}, labels {tuple(self.labels.shape)} and classes "
                f"{tuple(self.classes.shape)} must share the leading [S, N]"
            )
        if self.epochs < 1 or self.raw_lrs.shape != (S * self.epochs,):
            raise ValueError(
                f"raw_lrs must have T = S*E = {S}*{self.epochs} entries, got "
                f"{tuple(self.raw_lrs.shape)}"
            )
        if (self.label_kind == "binary") != (self.labels.dim() == 2):
            raise ValueError(f"labels {tuple(self.labels.shape)} do not fit {self.label_kind!r}")

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def initialize(
        cls,
        *,
        num_classes: int,
        sample_shape: tuple[int, ...],
        steps: int = 1,
        epochs: int = 3,
        images_per_class: int = 1,
        classes_per_step: int | None = None,
        learn_labels: bool = True,
        label_init: LabelInit = "onehot",
        softmax_targets: bool = False,
        binary: bool = False,
        distill_lr: float = 0.02,
        smoothing: float = 0.1,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        meta: dict[str, Any] | None = None,
    ) -> DistilledSet:
        """A fresh set: ``N(0, 1)`` data, class-interleaved labels, constant step sizes.

        Each step holds ``classes_per_step`` classes (default: all) times ``images_per_class``
        in the order ``c0, c1, ..., c0, c1, ...``; consecutive steps continue the class cycle,
        so fewer examples than classes (e.g. 5 images for 10 classes) still work.
        """
        if num_classes < 2:
            raise ValueError(f"need at least 2 classes, got {num_classes}")
        if binary and num_classes != 2:
            raise ValueError("binary tasks have exactly 2 classes")
        cps = num_classes if classes_per_step is None else classes_per_step
        if not 1 <= cps <= num_classes:
            raise ValueError(f"classes_per_step must be in [1, {num_classes}], got {cps}")
        if steps < 1 or epochs < 1 or images_per_class < 1:
            raise ValueError("steps, epochs and images_per_class must be >= 1")
        if label_init not in LABEL_INITS:
            raise ValueError(f"unknown label_init {label_init!r}; choose one of {LABEL_INITS}")
        n = cps * images_per_class
        classes = torch.tensor(
            [[(s * cps + i % cps) % num_classes for i in range(n)] for s in range(steps)]
        )
        data = torch.randn(steps, n, *sample_shape, generator=generator, dtype=dtype)
        if binary:
            labels = classes.to(dtype)
            if label_init == "smoothed":
                labels = labels * (1 - smoothing) + (1 - labels) * smoothing
            elif label_init == "random":
                labels = torch.randn(steps, n, generator=generator, dtype=dtype)
        else:
            labels = F.one_hot(classes, num_classes).to(dtype)
            if label_init == "smoothed":
                labels = labels * (1 - smoothing) + (1 - labels) * smoothing / (num_classes - 1)
            elif label_init == "random":
                labels = torch.randn(steps, n, num_classes, generator=generator, dtype=dtype)
        kind: LabelKind = "binary" if binary else ("softmax" if softmax_targets else "soft")
        raw = torch.full((steps * epochs,), inverse_softplus(distill_lr), dtype=dtype)
        return cls(data, labels, raw, classes, epochs, kind, learn_labels, None, dict(meta or {}))

    # -- views ----------------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        return self.data.shape[0]

    @property
    def total_steps(self) -> int:
        return self.raw_lrs.numel()

    @property
    def num_samples(self) -> int:
        return self.data.shape[0] * self.data.shape[1]

    @property
    def lrs(self) -> Tensor:
        """The step sizes ``softplus(raw_lrs)``."""
        return F.softplus(self.raw_lrs.detach())

    def learnable(self) -> list[Tensor]:
        """Tensors the outer optimiser updates (labels only when they are learned)."""
        return [self.data, self.raw_lrs] + ([self.labels] if self.learn_labels else [])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """A copy on another device/dtype (classes stay int64)."""

        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().to(device=device, dtype=dtype).clone()

        return DistilledSet(
            mv(self.data),
            mv(self.labels),
            mv(self.raw_lrs),
            self.classes.to(device),
            self.epochs,
            self.label_kind,
            self.learn_labels,
            mv(self.init_weights),
            dict(self.meta),
        )

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename): an interrupted save leaves the old file."""
        path = Path(path)
        tensors = {
            "data": self.data,
            "labels": self.labels,
            "raw_lrs": self.raw_lrs,
            "classes": self.classes,
        }
        if self.init_weights is not None:
            tensors["init_weights"] = self.init_weights
        header = {
            "epochs": self.epochs,
            "label_kind": self.label_kind,
            "learn_labels": self.learn_labels,
            "meta": self.meta,
        }
        atomic_save_safetensors(tensors, path, {"format": FORMAT, "header": json.dumps(header)})
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> DistilledSet:
        tensors, metadata = load_safetensors(path, device)
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a fastdistill distilled set (format {FORMAT!r})")
        header = json.loads(metadata["header"])
        return cls(
            data=tensors["data"],
            labels=tensors["labels"],
            raw_lrs=tensors["raw_lrs"],
            classes=tensors["classes"],
            epochs=int(header["epochs"]),
            label_kind=header["label_kind"],
            learn_labels=bool(header["learn_labels"]),
            init_weights=tensors.get("init_weights"),
            meta=header.get("meta", {}),
        )


def atomic_save_safetensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]):
    """safetensors ``save_file`` through a temp file in the same folder, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(clean, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_safetensors(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[dict[str, Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    return tensors, metadata
