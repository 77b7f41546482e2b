"""Shared pieces of the baselines: the set layout, class members, streamed rows, building a
hard-label set, step sizes."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fastdistill.data.protocol import DistillData
from fastdistill.distilled import DistilledSet, inverse_softplus
from fastdistill.evaluate import Accuracy

log = logging.getLogger("fastdistill.baselines")


#: Baselines that train nets (evaluated like distilled sets), then the k-NN classifiers.
TRAINED_BASELINES: tuple[str, ...] = ("random_real", "optimized_real", "kmeans", "average_real")
KNN_BASELINES: tuple[str, ...] = ("knn_random_real", "knn_kmeans")
BASELINES: tuple[str, ...] = TRAINED_BASELINES + KNN_BASELINES

#: Constant step sizes tried when ``lr=None`` (includes the original code's documented 0.3).
LR_GRID: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
#: Step size of a builder called without one: the original code's documented MNIST value.
DEFAULT_LR = 0.3

_CHUNK_ELEMENTS = 1 << 24  # floats per chunk of embedded rows (64 MiB in float32)
_CACHE_BYTES = 256 << 20  # a class's rows are kept in memory below this size, else streamed


@dataclass
class BaselineAccuracy(Accuracy):
    """Accuracies of one baseline, with the step size it trained with (None for k-NN), the
    number of data draws the accuracies come from, and k for k-NN."""

    lr: float | list[float] | None = None
    draws: int = 1
    k: int | None = None

    def __str__(self) -> str:
        if self.k is None or self.n_nets == 1:
            return super().__str__()
        return f"{100 * self.mean:.2f} +- {100 * self.std:.2f}% over {self.n_nets} draws"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(super().to_dict())
        out.update(lr=self.lr, draws=self.draws)
        if self.k is not None:
            out["k"] = self.k
        return out


# ---------------------------------------------------------------------------------------------
# layout, randomness, rows


def class_layout(
    num_classes: int, steps: int, per_class: int, classes_per_step: int | None = None
) -> Tensor:
    """``[S, N]`` class of every sample, ``N = classes_per_step * per_class``: the order of
    ``DistilledSet.initialize`` (``c0, c1, ..., c0, c1, ...``, steps continue the cycle)."""
    cps = num_classes if classes_per_step is None else classes_per_step
    if not 1 <= cps <= num_classes:
        raise ValueError(f"classes_per_step must be in [1, {num_classes}], got {cps}")
    if steps < 1 or per_class < 1:
        raise ValueError(f"steps and per_class must be >= 1, got {steps} and {per_class}")
    n = cps * per_class
    i = torch.arange(n)
    s = torch.arange(steps)[:, None]
    return (s * cps + i % cps) % num_classes


def _cpu_generator(gen: torch.Generator | None) -> torch.Generator:
    """A CPU generator for data sampling: ``gen`` itself when on the CPU, else seeded from it
    (so one generator on any device makes the whole run deterministic)."""
    if gen is not None and gen.device.type == "cpu":
        return gen
    device = gen.device if gen is not None else "cpu"
    seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=device))
    return torch.Generator().manual_seed(seed)


def _class_members(data: DistillData) -> list[Tensor]:
    """CPU indices of each class's training examples."""
    y = data.train_y.cpu()
    order = torch.argsort(y, stable=True)
    counts = torch.bincount(y, minlength=data.num_classes).tolist()
    return list(torch.split(order, counts))


def _class_name(data: DistillData, c: int) -> str:
    names = getattr(data, "class_names", None)
    return f"{c} ({names[c]!r})" if names and c < len(names) else str(c)


def _check_counts(data: DistillData, members: list[Tensor], layout: Tensor, what: str) -> None:
    """Every class the layout needs has enough training examples (clear error otherwise)."""
    need = torch.bincount(layout.flatten(), minlength=data.num_classes).tolist()
    for c, n in enumerate(need):
        have = members[c].numel()
        if n and have == 0:
            raise ValueError(f"{what}: class {_class_name(data, c)} has no training examples")
        if n > have:
            raise ValueError(
                f"{what}: class {_class_name(data, c)} has {have} training examples but needs "
                f"{n} (per_class x steps); lower per_class or steps"
            )


def _sample_dim(data: DistillData) -> int:
    return math.prod(data.sample_shape)


def _embed(data: DistillData, idx: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Model inputs ``[len(idx), *sample_shape]`` of training rows, embedded chunk by chunk."""
    chunk = max(1, _CHUNK_ELEMENTS // max(1, _sample_dim(data)))
    device = data.train_x.device
    parts = [
        data.model_inputs(data.train_x[idx[i : i + chunk].to(device)])
        for i in range(0, idx.numel(), chunk)
    ]
    out = torch.cat(parts) if parts else data.model_inputs(data.train_x[:0])
    return out.to(dtype) if dtype is not None else out


class _Rows:
    """Flattened model inputs of a set of rows, in float64 for k-means: kept in memory when
    small, else produced (embedded) chunk by chunk, since an IMDB class embedded at full length
    would take gigabytes. ``dtype`` is the rows' own dtype, that of the results."""

    def __init__(self, get: Callable[[Tensor], Tensor], n: int, dim: int, dtype: torch.dtype):
        self._get, self.n, self.dim, self.dtype = get, n, dim, dtype
        self._full: Tensor | None = None
        self.chunk = max(1, _CHUNK_ELEMENTS // max(1, dim))
        if n * dim * 8 <= _CACHE_BYTES:
            self._full = get(torch.arange(n)).double()

    @classmethod
    def of_tensor(cls, x: Tensor) -> _Rows:
        flat = x.reshape(x.shape[0], -1)
        return cls(lambda pos: flat[pos.to(flat.device)], flat.shape[0], flat.shape[1], x.dtype)

    @classmethod
    def of_training(cls, data: DistillData, idx: Tensor) -> _Rows:
        dtype = data.model_inputs(data.train_x[:1]).dtype
        get = lambda pos: _embed(data, idx[pos.cpu()]).flatten(1)
        return cls(get, idx.numel(), _sample_dim(data), dtype)

    def get(self, pos: Tensor) -> Tensor:
        if self._full is not None:
            return self._full[pos.to(self._full.device)]
        return self._get(pos).double()

    def chunks(self) -> Iterator[tuple[int, Tensor]]:
        for start in range(0, self.n, self.chunk):
            end = min(self.n, start + self.chunk)
            if self._full is not None:
                yield start, self._full[start:end]
            else:
                yield start, self._get(torch.arange(start, end)).double()


# ---------------------------------------------------------------------------------------------
# building sets


def _step_sizes(lr: float | Tensor, total_steps: int) -> Tensor:
    """``[T]`` step sizes from one constant or ``T`` values (e.g. a distilled set's ``lrs``)."""
    if isinstance(lr, Tensor):
        lrs = lr.detach().flatten().double().cpu()
        if lrs.numel() == 1:
            lrs = lrs.expand(total_steps)
        if lrs.numel() != total_steps:
            raise ValueError(
                f"lr has {lrs.numel()} step sizes but the baseline takes T = {total_steps} steps"
            )
    else:
        lrs = torch.full((total_steps,), float(lr), dtype=torch.float64)
    if not bool(torch.isfinite(lrs).all()) or bool((lrs <= 0).any()):
        raise ValueError(f"step sizes must be positive and finite, got {lrs.tolist()}")
    return lrs


def _raw_lrs(lrs: Tensor) -> Tensor:
    """Inverse softplus, elementwise (``DistilledSet`` stores raw step sizes)."""
    return torch.tensor([inverse_softplus(float(v)) for v in lrs], dtype=torch.float64)


def _make_set(
    data: DistillData,
    x: Tensor,
    layout: Tensor,
    epochs: int,
    lr: float | Tensor,
    init_weights: Tensor | None,
    meta: dict[str, Any],
) -> DistilledSet:
    """A hard-label set: labels follow ``layout`` (one-hot, or class index for binary)."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    steps, n = layout.shape
    x = x.reshape(steps, n, *data.sample_shape)
    dtype = x.dtype
    classes = layout.to(x.device)
    if data.binary:
        labels, kind = classes.to(dtype), "binary"  # class 1 -> 1.0: BCE target of the positive
    else:
        labels, kind = F.one_hot(classes, data.num_classes).to(dtype), "soft"
    raw = _raw_lrs(_step_sizes(lr, steps * epochs)).to(x.device, dtype)
    w0 = None if init_weights is None else init_weights.detach().reshape(-1).to(x.device, dtype)
    meta = {"dataset": data.name, "lr": _lr_meta(lr), **meta}
    return DistilledSet(x, labels, raw, classes, epochs, kind, False, w0, meta)


def _lr_meta(lr: float | Tensor | None) -> float | list[float] | None:
    """A step-size choice as JSON: a float, or the list of per-step values."""
    if lr is None or not isinstance(lr, Tensor):
        return None if lr is None else float(lr)
    return float(lr) if lr.numel() == 1 else lr.detach().flatten().tolist()


def with_lr(distilled: DistilledSet, lr: float | Tensor) -> DistilledSet:
    """A copy of ``distilled`` that trains with other step sizes."""
    raw = _raw_lrs(_step_sizes(lr, distilled.total_steps)).to(distilled.raw_lrs)
    out = distilled.to()
    out.raw_lrs = raw
    out.meta["lr"] = _lr_meta(lr)
    return out


def _place(layout: Tensor, per_class: dict[int, Tensor]) -> Tensor:
    """Indices (or rows) of each class put at that class's positions in ``layout``, in order."""
    flat = layout.flatten()
    first = next(iter(per_class.values()))
    out = first.new_empty((flat.numel(), *first.shape[1:]))
    for c, vals in per_class.items():
        pos = (flat == c).nonzero().flatten()
        out[pos.to(out.device)] = vals[: pos.numel()]
    return out


def _random_indices(members: list[Tensor], layout: Tensor, gen: torch.Generator) -> Tensor:
    """Training indices in layout order: per class, a sample without replacement."""
    need = torch.bincount(layout.flatten(), minlength=len(members)).tolist()
    chosen = {
        c: members[c][torch.randperm(members[c].numel(), generator=gen)[:n]]
        for c, n in enumerate(need)
        if n
    }
    return _place(layout, chosen)
