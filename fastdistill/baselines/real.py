"""Baselines of real examples: a random sample per class, and the class means."""

from __future__ import annotations

import torch
from torch import Tensor

from fastdistill.baselines import _common
from fastdistill.baselines._common import (
    DEFAULT_LR,
    _check_counts,
    _class_members,
    _cpu_generator,
    _embed,
    _make_set,
    _random_indices,
    _sample_dim,
    class_layout,
)
from fastdistill.data.protocol import DistillData
from fastdistill.distilled import DistilledSet


def random_real(
    data: DistillData,
    *,
    per_class: int = 1,
    steps: int = 1,
    epochs: int = 1,
    classes_per_step: int | None = None,
    lr: float | Tensor = DEFAULT_LR,
    init_weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> DistilledSet:
    """Random real examples per class, in the distilled-set order; ``meta["train_indices"]``
    lists the training rows used (layout order)."""
    layout = class_layout(data.num_classes, steps, per_class, classes_per_step)
    members = _class_members(data)
    _check_counts(data, members, layout, "random_real")
    return _random_real_set(data, members, layout, epochs, lr, init_weights, generator)


def _random_real_set(
    data: DistillData,
    members: list[Tensor],
    layout: Tensor,
    epochs: int,
    lr: float | Tensor,
    init_weights: Tensor | None,
    generator: torch.Generator | None,
    name: str = "random_real",
) -> DistilledSet:
    idx = _random_indices(members, layout, _cpu_generator(generator))
    meta = {"baseline": name, "train_indices": idx.tolist()}
    return _make_set(data, _embed(data, idx), layout, epochs, lr, init_weights, meta)


def average_real(
    data: DistillData,
    *,
    per_class: int = 1,
    steps: int = 1,
    epochs: int = 1,
    classes_per_step: int | None = None,
    lr: float | Tensor = DEFAULT_LR,
    init_weights: Tensor | None = None,
) -> DistilledSet:
    """The mean model input of each class (accumulated in float64, chunk by chunk), at every
    position of that class."""
    layout = class_layout(data.num_classes, steps, per_class, classes_per_step)
    members = _class_members(data)
    _check_counts(data, members, layout, "average_real")
    means = _class_means(data)
    x = means[layout.flatten().to(means.device)]
    return _make_set(data, x, layout, epochs, lr, init_weights, {"baseline": "average_real"})


def _class_means(data: DistillData) -> Tensor:
    """``[K, *sample_shape]`` class means of the training model inputs."""
    n = data.train_x.shape[0]
    dim = _sample_dim(data)
    chunk = max(1, _common._CHUNK_ELEMENTS // max(1, dim))
    sums = counts = None
    for i in range(0, n, chunk):
        x = data.model_inputs(data.train_x[i : i + chunk]).flatten(1)
        y = data.train_y[i : i + chunk].to(x.device)
        if sums is None:
            sums = torch.zeros(data.num_classes, dim, dtype=torch.float64, device=x.device)
            counts = torch.zeros(data.num_classes, dtype=torch.float64, device=x.device)
            dtype = x.dtype
        sums.index_add_(0, y, x.double())
        counts.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
    means = sums / counts.clamp_min(1)[:, None]
    return means.to(dtype).reshape(data.num_classes, *data.sample_shape)
