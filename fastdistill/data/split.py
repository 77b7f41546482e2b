"""Hold out part of a training set for validation (model selection without the test set)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from fastdistill.data.protocol import DistillData

_PER_EXAMPLE_TRAIN_FIELDS = ("train_x", "train_y", "train_lengths")


def split_validation(
    data: DistillData, fraction: float, seed: int = 0
) -> tuple[DistillData, Tensor, Tensor]:
    """A stratified, seeded split: ``(data with the rest as its training set, val_x, val_y)``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    n = data.train_x.shape[0]
    labels = data.train_y.cpu().numpy()
    from sklearn.model_selection import train_test_split  # heavy (~1 s): only when splitting

    keep, held = train_test_split(range(n), test_size=fraction, random_state=seed, stratify=labels)
    keep_t = torch.as_tensor(sorted(keep), device=data.train_x.device)
    held_t = torch.as_tensor(sorted(held), device=data.train_x.device)
    changes = {
        name: getattr(data, name)[keep_t]
        for name in _PER_EXAMPLE_TRAIN_FIELDS
        if getattr(data, name, None) is not None
    }
    return dataclasses.replace(data, **changes), data.train_x[held_t], data.train_y[held_t]
