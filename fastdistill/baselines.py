"""Baselines of the paper (SPEC §5): real data at the same number of samples and GD steps.

* ``random_real``: a per-class random sample of real training examples;
* ``optimized_real``: the best ``keep_fraction`` (20%) of many random draws, each scored by the
  training-set accuracy of nets trained on it, measured on a random subsample of the training
  set (default 1,024 examples and 20 nets, as the original code's one 1,024-example training
  batch and ``test_optimize_n_nets``), the same examples and nets for every draw;
* ``kmeans``: per-class k-means centroids (k-means++ init, Lloyd iterations);
* ``average_real``: the class means;
* ``knn_random_real`` / ``knn_kmeans``: k-NN classifiers (1-NN by default) on the random real
  samples / the k-means centroids, over flattened model inputs.

A baseline that trains nets is a hard-label :class:`DistilledSet` (``S`` steps of ``N`` examples
in the class-interleaved order of ``DistilledSet.initialize``, one-hot labels in that same order,
scalar labels for binary tasks with class 1 = 1.0), so :func:`evaluate_distilled` trains and
tests it exactly like a distilled set. Everything works on model inputs (``data.model_inputs``:
images as stored, text embedded chunk by chunk), so images and text share one code path.

Step sizes: the original code trained baselines with one constant step size given on its
command line (``--test_distilled_lrs fix LR``; its docs use 0.3 for MNIST optimized real) or with
the learned step sizes of a distilled set (``loaded``). Here ``lr`` may be either (a float, or a
``[T]`` tensor such as ``distilled.lrs``); by default (``lr=None``) :func:`run_baselines` picks one
constant from :data:`LR_GRID` per baseline by training-set accuracy (the test set is never used),
so no baseline loses for a step size tuned to another.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdistill.data.protocol import DistillData
from fastdistill.distilled import DistilledSet, inverse_softplus
from fastdistill.engine.functional import FlatModel
from fastdistill.engine.init import InitScheme, sample_weights
from fastdistill.evaluate import Accuracy, accuracy, evaluate_distilled, train_on_distilled
from fastdistill.ops import nearest_embedding

__all__ = [
    "BASELINES",
    "DEFAULT_LR",
    "KNN_BASELINES",
    "LR_GRID",
    "TRAINED_BASELINES",
    "BaselineAccuracy",
    "average_real",
    "choose_lr",
    "class_layout",
    "kmeans",
    "kmeans_centroids",
    "knn_accuracy",
    "knn_predict",
    "optimized_real",
    "random_real",
    "run_baselines",
    "train_accuracy",
    "with_lr",
]

log = logging.getLogger(__name__)

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
    chunk = max(1, _CHUNK_ELEMENTS // max(1, dim))
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


# ---------------------------------------------------------------------------------------------
# k-means


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


# ---------------------------------------------------------------------------------------------
# k-NN


def knn_predict(reference_x: Tensor, reference_y: Tensor, queries: Tensor, *, k: int = 1) -> Tensor:
    """k-NN class predictions ``[n]`` for flattened ``queries`` ``[n, F]`` against ``[M, F]``
    reference rows (Euclidean). k > 1: majority vote; a tie goes to the tied class whose nearest
    member is closest; equal distances go to the lower reference index."""
    if not 1 <= k <= reference_x.shape[0]:
        raise ValueError(f"k must be in [1, {reference_x.shape[0]}] (reference rows), got {k}")
    q = queries.reshape(queries.shape[0], -1).to(reference_x)
    with torch.no_grad():
        _, idx = nearest_embedding(q.contiguous(), reference_x.contiguous(), k)
    labels = reference_y.to(idx.device)[idx]  # [n, k], nearest first
    if k == 1:
        return labels[:, 0]
    num = int(reference_y.max()) + 1
    counts = F.one_hot(labels, num).sum(1)
    rank = torch.arange(k, device=idx.device).expand_as(labels)
    first = torch.full_like(counts, k).scatter_reduce(1, labels, rank, "amin")
    return (counts * (k + 1) - first).argmax(1)


def knn_accuracy(
    data: DistillData,
    reference: DistilledSet | tuple[Tensor, Tensor],
    *,
    k: int = 1,
    batch_size: int = 1024,
) -> float:
    """Test accuracy of a k-NN classifier fitted on ``reference``: a baseline set (its data and
    classes) or ``(x, y)`` stored training examples (embedded here). Test examples are embedded
    and searched ``batch_size`` at a time; the distance matrix is never built whole."""
    if isinstance(reference, DistilledSet):
        ref_x = reference.data.detach().reshape(reference.num_samples, -1)
        ref_y = reference.classes.reshape(-1)
    else:
        x, ref_y = reference
        parts = [
            data.model_inputs(x[i : i + batch_size]).flatten(1)
            for i in range(0, x.shape[0], batch_size)
        ]
        if not parts:
            raise ValueError("the k-NN reference set is empty")
        ref_x = torch.cat(parts)
    ref_x = ref_x.float() if ref_x.dtype not in (torch.float32, torch.float64) else ref_x
    correct = 0
    n = data.test_x.shape[0]
    if n == 0:
        raise ValueError("empty test set")
    for i in range(0, n, batch_size):
        q = data.model_inputs(data.test_x[i : i + batch_size]).to(ref_x.device)
        pred = knn_predict(ref_x, ref_y.to(ref_x.device), q, k=k)
        correct += int((pred == data.test_y[i : i + batch_size].to(pred.device)).sum())
    return correct / n


# ---------------------------------------------------------------------------------------------
# training-set scores, step-size choice, optimized real


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


# ---------------------------------------------------------------------------------------------
# the entry point


def run_baselines(
    data: DistillData,
    model: FlatModel | nn.Module,
    *,
    per_class: int = 1,
    steps: int = 10,
    epochs: int = 3,
    classes_per_step: int | None = None,
    init: str = "random",
    n_nets: int = 200,
    init_weights: Tensor | None = None,
    scheme: InitScheme = "xavier",
    gain: float = 1.0,
    lr: float | Tensor | None = None,
    lr_grid: Sequence[float] = LR_GRID,
    draws: int = 10,
    candidates: int = 50,
    keep_fraction: float = 0.2,
    score_nets: int = 20,
    score_samples: int = 1024,
    knn_k: int = 1,
    kmeans_n_init: int = 1,
    names: Sequence[str] = BASELINES,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> dict[str, BaselineAccuracy]:
    """Test accuracies of the baselines ``names`` at ``per_class`` x classes per step samples
    per step, ``steps`` steps, ``epochs`` epochs: the size and schedule of a distilled set.

    Trained baselines are evaluated by :func:`evaluate_distilled`: ``init="fixed"`` trains the
    net ``init_weights`` (drawn once from ``scheme`` if None; pass the distilled set's own);
    ``init="random"`` trains ``n_nets`` fresh nets in total. Random real and k-means are drawn
    ``draws`` times (the nets are spread over the draws; fixed init gives one accuracy per draw)
    and their k-NN classifiers use the same draws; optimized real keeps ``keep_fraction`` of
    ``candidates`` draws (see :func:`optimized_real`), spread the same way. ``lr``: one constant
    or ``T`` step sizes for all baselines; None picks one per baseline from ``lr_grid`` by
    training-set accuracy (random and optimized real share the choice made on the first random
    draw). Deterministic given ``generator`` (default: a CPU generator seeded with ``seed``).
    """
    unknown = [n for n in names if n not in BASELINES]
    if unknown or not names:
        raise ValueError(f"unknown baseline(s) {unknown or names!r}; choose from {BASELINES}")
    if init not in ("fixed", "random"):
        raise ValueError(f"init must be 'fixed' or 'random', got {init!r}")
    if n_nets < 1 or draws < 1:
        raise ValueError(f"n_nets and draws must be >= 1, got {n_nets} and {draws}")
    model = model if isinstance(model, FlatModel) else FlatModel(model)
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    cpu = _cpu_generator(gen)
    layout = class_layout(data.num_classes, steps, per_class, classes_per_step)
    members = _class_members(data)
    _check_counts(data, members, layout, "baselines")
    if init == "fixed" and init_weights is None:
        init_weights = sample_weights(model, 1, scheme=scheme, gain=gain, generator=cpu)
    fixed = init_weights if init == "fixed" else None
    if fixed is None:
        score_w = sample_weights(model, score_nets, scheme=scheme, gain=gain, generator=cpu)
    else:
        score_w = fixed
    run = _Run(
        data,
        model,
        layout,
        members,
        epochs,
        init,
        n_nets,
        fixed,
        scheme,
        gain,
        gen,
        cpu,
        lr,
        tuple(lr_grid),
        score_w,
        _score_indices(data, score_samples, cpu),
        knn_k,
    )
    wanted = set(names)
    out: dict[str, BaselineAccuracy] = {}
    # dropout in the nets draws from the global RNG: seed it from the generator, restore it after
    devices = [data.train_x.device] if data.train_x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=cpu)))
        if wanted & {"random_real", "knn_random_real", "optimized_real"}:
            both = wanted & {"random_real", "knn_random_real"}
            rand = [run.random_draw() for _ in range(draws if both else 1)]
            if wanted & {"random_real", "optimized_real"}:
                run.choose("real", rand[0])
            out.update(run.trained_and_knn("random_real", rand, wanted))
        if "optimized_real" in wanted:
            kept = optimized_real(
                data,
                model,
                per_class=per_class,
                steps=steps,
                epochs=epochs,
                classes_per_step=classes_per_step,
                lr=run.chosen["real"],
                init_weights=fixed,
                candidates=candidates,
                keep_fraction=keep_fraction,
                score_weights=score_w,
                score_samples=score_samples,
                generator=cpu,
            )
            out["optimized_real"] = run.trained("real", kept)
        if wanted & {"kmeans", "knn_kmeans"}:
            km = [
                kmeans_centroids(
                    data,
                    per_class=per_class,
                    steps=steps,
                    epochs=epochs,
                    classes_per_step=classes_per_step,
                    init_weights=fixed,
                    n_init=kmeans_n_init,
                    generator=cpu,
                )
                for _ in range(draws)
            ]
            if "kmeans" in wanted:
                run.choose("kmeans", km[0])
            out.update(run.trained_and_knn("kmeans", km, wanted))
        if "average_real" in wanted:
            avg = average_real(
                data,
                per_class=per_class,
                steps=steps,
                epochs=epochs,
                classes_per_step=classes_per_step,
                init_weights=fixed,
            )
            out["average_real"] = run.trained(run.choose("average_real", avg), [avg])
    return {n: out[n] for n in names if n in out}


@dataclass
class _Run:
    """What every baseline of one :func:`run_baselines` call shares: the data, nets, step-size
    choices and scoring examples."""

    data: DistillData
    model: FlatModel
    layout: Tensor
    members: list[Tensor]
    epochs: int
    init: str
    n_nets: int
    fixed: Tensor | None
    scheme: InitScheme
    gain: float
    gen: torch.Generator
    cpu: torch.Generator
    lr: float | Tensor | None
    lr_grid: tuple[float, ...]
    score_weights: Tensor
    score_indices: Tensor
    knn_k: int
    chosen: dict[str, float | Tensor] = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype:
        """The nets' dtype: sets are evaluated in it (a float64 model trains in float64)."""
        return next(self.model.module.parameters()).dtype

    def random_draw(self) -> DistilledSet:
        args = (self.layout, self.epochs, DEFAULT_LR, self.fixed, self.cpu)
        return _random_real_set(self.data, self.members, *args)

    def choose(self, key: str, pilot: DistilledSet) -> str:
        """Fix the step size of ``key`` (given, or chosen on ``pilot``); returns ``key``."""
        if key not in self.chosen:
            if self.lr is not None:
                self.chosen[key] = self.lr
            else:
                args = (self.score_weights, self.score_indices, self.lr_grid)
                self.chosen[key] = choose_lr(pilot, self.model, self.data, *args)
                log.info("baselines %s: step size %s", key, self.chosen[key])
        return key

    def trained(self, key: str, sets: list[DistilledSet]) -> BaselineAccuracy:
        """Test accuracies of nets trained on ``sets`` at ``key``'s step size, ``n_nets`` in
        all spread over the sets (fixed init: the one net on each set)."""
        lr = self.chosen[key]
        accs = []
        for d, nets in zip(sets, _split(self.n_nets, len(sets))):
            if self.init == "fixed" or nets > 0:
                acc = evaluate_distilled(
                    with_lr(d, lr).to(dtype=self.dtype),
                    self.model,
                    self.data.test_x,
                    self.data.test_y,
                    init=self.init,
                    n_nets=max(nets, 1),
                    init_weights=self.fixed,
                    scheme=self.scheme,
                    gain=self.gain,
                    generator=self.gen,
                    transform=self.data.model_inputs,
                )
                accs.append(acc.accuracies)
        return BaselineAccuracy(torch.cat(accs), lr=_lr_meta(lr), draws=len(sets))

    def knn(self, sets: list[DistilledSet]) -> BaselineAccuracy:
        accs = [knn_accuracy(self.data, d, k=self.knn_k) for d in sets]
        return BaselineAccuracy(
            torch.tensor(accs, dtype=torch.float64), draws=len(sets), k=self.knn_k
        )

    def trained_and_knn(
        self, name: str, sets: list[DistilledSet], wanted: set[str]
    ) -> dict[str, BaselineAccuracy]:
        """``name`` (nets trained on ``sets``) and ``knn_<name>``, those of them wanted."""
        out = {}
        if name in wanted:
            out[name] = self.trained("real" if name == "random_real" else name, sets)
        if f"knn_{name}" in wanted:
            out[f"knn_{name}"] = self.knn(sets)
        return out


def _split(total: int, parts: int) -> list[int]:
    """``total`` nets spread as evenly as possible over ``parts`` draws (earlier draws first)."""
    return [total // parts + (i < total % parts) for i in range(parts)]
