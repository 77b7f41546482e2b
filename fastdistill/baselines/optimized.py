"""Training-set scores, the step-size choice, and the optimized-real baseline."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fastdistill.baselines._common import (
    DEFAULT_LR,
    LR_GRID,
    _check_counts,
    _class_members,
    _cpu_generator,
    class_layout,
    log,
    with_lr,
)
from fastdistill.baselines.real import _random_real_set
from fastdistill.data.protocol import DistillData
from fastdistill.distilled import DistilledSet
from fastdistill.engine.functional import FlatModel
from fastdistill.engine.init import InitScheme, sample_weights
from fastdistill.evaluate import accuracy, train_on_distilled


def train_accuracy(
    distilled: DistilledSet,
    model: FlatModel,
    data: DistillData,
    weights: Tensor,
    indices: Tensor,
) -> Tensor:
    """Accuracy ``[B]`` on the training rows ``indices`` of the nets ``weights`` ``[B, P]``
    trained on ``distilled``; a net whose weights blew up scores 0 (not an argmax of NaNs)."""
    w0 = weights.reshape(-1, model.num_params).to(distilled.data.device, distilled.data.dtype)
    w = train_on_distilled(model, w0, distilled)
    idx = indices.to(data.train_x.device)
    acc = accuracy(
        model,
        w,
        data.train_x[idx],
        data.train_y[idx],
        binary=distilled.label_kind == "binary",
        transform=data.model_inputs,
    )
    return torch.where(torch.isfinite(w).all(-1), acc, torch.zeros_like(acc))


def choose_lr(
    distilled: DistilledSet,
    model: FlatModel,
    data: DistillData,
    weights: Tensor,
    indices: Tensor,
    grid: Sequence[float] = LR_GRID,
) -> float:
    """The constant step size of ``grid`` whose nets reach the best mean training accuracy on
    ``indices`` (ties: the first in ``grid``)."""
    if not grid:
        raise ValueError("the step-size grid is empty")
    scores = [
        float(train_accuracy(with_lr(distilled, lr), model, data, weights, indices).mean())
        for lr in grid
    ]
    best = max(range(len(grid)), key=lambda i: (scores[i], -i))
    log.info("step sizes %s -> training accuracy %s", list(grid), scores)
    return float(grid[best])


def optimized_real(
    data: DistillData,
    model: FlatModel | nn.Module,
    *,
    per_class: int = 1,
    steps: int = 1,
    epochs: int = 1,
    classes_per_step: int | None = None,
    lr: float | Tensor = DEFAULT_LR,
    init_weights: Tensor | None = None,
    candidates: int = 50,
    keep_fraction: float = 0.2,
    score_weights: Tensor | None = None,
    score_nets: int = 20,
    score_samples: int = 1024,
    scheme: InitScheme = "xavier",
    gain: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[DistilledSet]:
    """The best ``keep_fraction`` of ``candidates`` random-real draws, best first.

    Each draw is scored by the mean accuracy, on ``score_samples`` random training examples,
    of the nets ``score_weights`` (default: ``init_weights`` when given, else ``score_nets``
    fresh draws from ``scheme``) trained on it; every draw is scored with the same nets and
    examples, so the ranking compares data, not luck. Each kept set's ``meta`` has its
    ``candidate`` index, ``train_score`` and all ``candidate_scores``.
    """
    if candidates < 1 or not 0 < keep_fraction <= 1:
        raise ValueError(
            f"need candidates >= 1 and 0 < keep_fraction <= 1, got {candidates}, {keep_fraction}"
        )
    model = model if isinstance(model, FlatModel) else FlatModel(model)
    layout = class_layout(data.num_classes, steps, per_class, classes_per_step)
    members = _class_members(data)
    _check_counts(data, members, layout, "optimized_real")
    gen = _cpu_generator(generator)
    indices = _score_indices(data, score_samples, gen)
    if score_weights is None:
        score_weights = init_weights
    if score_weights is None:
        score_weights = sample_weights(model, score_nets, scheme=scheme, gain=gain, generator=gen)
    sets, scores = [], []
    for _ in range(candidates):
        d = _random_real_set(
            data, members, layout, epochs, lr, init_weights, gen, name="optimized_real"
        )
        sets.append(d)
        scores.append(float(train_accuracy(d, model, data, score_weights, indices).mean()))
    keep = max(1, round(keep_fraction * candidates))
    order = sorted(range(candidates), key=lambda i: (-scores[i], i))[:keep]
    for i in order:
        sets[i].meta.update(candidate=i, train_score=scores[i], candidate_scores=scores)
    return [sets[i] for i in order]


def _score_indices(data: DistillData, n: int, gen: torch.Generator) -> Tensor:
    """A random subsample of the training set (all of it when smaller), sorted."""
    total = data.train_x.shape[0]
    if n < 1:
        raise ValueError(f"score_samples must be >= 1, got {n}")
    if n >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=gen)[:n].sort().values
