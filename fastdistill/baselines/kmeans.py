"""k-means centroids per class (k-means++ init, Lloyd iterations), streamed in chunks."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastdistill.baselines._common import (
    DEFAULT_LR,
    _check_counts,
    _class_members,
    _cpu_generator,
    _make_set,
    _place,
    _Rows,
    class_layout,
)
from fastdistill.data.protocol import DistillData
from fastdistill.distilled import DistilledSet
from fastdistill.ops import nearest_embedding


def kmeans(
    x: Tensor | _Rows,
    k: int,
    *,
    n_init: int = 1,
    max_iter: int = 300,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, float]:
    """k-means of the rows of ``x`` (``[n, ...]``, flattened): k-means++ init, then Lloyd
    iterations until no assignment changes (or ``max_iter``); the best of ``n_init`` runs by
    inertia (default 1, as scikit-learn's for k-means++; each baseline draw is a new run). Returns ``(centroids [k, F], inertia)``; every centroid is the mean of the rows
    assigned to it. Nearest-centroid search is ``fastdistill.ops.nearest_embedding`` and the
    rows are visited chunk by chunk, so memory stays bounded."""
    rows = x if isinstance(x, _Rows) else _Rows.of_tensor(x)
    if not 1 <= k <= rows.n:
        raise ValueError(f"k-means needs 1 <= k <= number of rows ({rows.n}), got k={k}")
    if n_init < 1 or max_iter < 1:
        raise ValueError(f"n_init and max_iter must be >= 1, got {n_init} and {max_iter}")
    gen = _cpu_generator(generator)
    best: tuple[Tensor, float] | None = None
    for _ in range(n_init):
        centers, inertia = _lloyd(rows, _kmeans_pp(rows, k, gen), max_iter)
        if best is None or inertia < best[1]:
            best = (centers, inertia)
    assert best is not None
    return best[0].to(rows.dtype), best[1]


def _sq_dist_to(rows: _Rows, center: Tensor) -> Tensor:
    out = torch.empty(rows.n, dtype=torch.float64)
    for start, x in rows.chunks():
        d = (x - center).pow(2).sum(1)
        out[start : start + x.shape[0]] = d.cpu()
    return out


def _kmeans_pp(rows: _Rows, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding: each next center drawn with probability proportional to the squared
    distance to the nearest center chosen so far."""
    first = int(torch.randint(rows.n, (1,), generator=gen))
    centers = [rows.get(torch.tensor([first]))[0]]
    d2 = _sq_dist_to(rows, centers[0])
    for _ in range(1, k):
        total = float(d2.sum())
        if total > 0 and math.isfinite(total):
            pick = int(torch.multinomial(d2 / total, 1, generator=gen))
        else:  # every row coincides with a center: any row will do
            pick = int(torch.randint(rows.n, (1,), generator=gen))
        centers.append(rows.get(torch.tensor([pick]))[0])
        d2 = torch.minimum(d2, _sq_dist_to(rows, centers[-1]))
    return torch.stack(centers)


def _lloyd(rows: _Rows, centers: Tensor, max_iter: int) -> tuple[Tensor, float]:
    k = centers.shape[0]
    assign = torch.full((rows.n,), -1, dtype=torch.long)
    dist = torch.empty(rows.n, dtype=torch.float64)
    for _ in range(max_iter):
        sums = torch.zeros(k, rows.dim, dtype=torch.float64, device=centers.device)
        counts = torch.zeros(k, dtype=torch.float64, device=centers.device)
        changed = 0
        for start, x in rows.chunks():
            with torch.no_grad():
                vals, idx = nearest_embedding(x.contiguous(), centers.to(x.device), 1)
            a = idx[:, 0]
            sums.index_add_(0, a.to(sums.device), x.to(sums.device))
            counts.index_add_(0, a.to(sums.device), torch.ones_like(a, dtype=torch.float64))
            end = start + x.shape[0]
            changed += int((assign[start:end] != a.cpu()).sum())
            assign[start:end] = a.cpu()
            dist[start:end] = vals[:, 0].double().cpu()
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():  # re-seed empty clusters at the rows farthest from their centers
            far = torch.topk(dist, empty.numel()).indices
            sums[empty] = rows.get(far).to(sums.device)
            counts[empty] = 1.0
            dist[far] = 0.0
            changed += 1
        centers = sums / counts[:, None]
        if changed == 0:
            break
    return centers, float(dist.pow(2).sum())


def kmeans_centroids(
    data: DistillData,
    *,
    per_class: int = 1,
    steps: int = 1,
    epochs: int = 1,
    classes_per_step: int | None = None,
    lr: float | Tensor = DEFAULT_LR,
    init_weights: Tensor | None = None,
    n_init: int = 1,
    max_iter: int = 300,
    generator: torch.Generator | None = None,
) -> DistilledSet:
    """Per class, as many k-means centroids as the layout has positions of that class, over the
    flattened model inputs (text: embedded sentences, embedded chunk by chunk)."""
    layout = class_layout(data.num_classes, steps, per_class, classes_per_step)
    members = _class_members(data)
    _check_counts(data, members, layout, "kmeans")
    gen = _cpu_generator(generator)
    need = torch.bincount(layout.flatten(), minlength=data.num_classes).tolist()
    cents: dict[int, Tensor] = {}
    for c, k in enumerate(need):
        if k:
            rows = _Rows.of_training(data, members[c])
            cents[c], _ = kmeans(rows, k, n_init=n_init, max_iter=max_iter, generator=gen)
    x = _place(layout, cents)
    meta = {"baseline": "kmeans", "n_init": n_init}
    return _make_set(data, x, layout, epochs, lr, init_weights, meta)
