"""Soft-label k-NN prototypes: the k-NN counterpart of soft-label distillation (paper §3.2).

A small set of prototypes, each with a position and a label row over *all* classes, classifies a
point by distance-weighted soft-label voting (the soft-label prototype k-NN of Sucholutsky and
Schonlau): ``score_c(x) = sum_j w_j(x) * y_jc`` over the ``k`` nearest prototypes with
``w_j ∝ d(x, p_j) ** -power``, and predicts ``argmax_c score_c``. The rule is differentiable in
positions and labels, so both are learned by gradient descent on the cross-entropy of the scores
(prototype generation + soft labels: the paper's "combined method"). Because label rows mix
classes, two prototypes can carve out three class regions (the paper's Figure 4).

Labels are ``"simplex"`` (each row a distribution, ``softmax(raw)``, as the paper's pie charts
show; a learned inverse temperature scales the scores for the loss) or ``"raw"`` (unconstrained
rows as in soft-label dataset distillation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

LabelParam = Literal["simplex", "raw"]
Init = Literal["kmeans", "class_means", "random_real"]
INITS: tuple[str, ...] = ("kmeans", "class_means", "random_real")


def knn_scores(
    x: Tensor,
    positions: Tensor,
    label_rows: Tensor,
    *,
    k: int | None = None,
    power: float = 1.0,
    eps: float = 1e-6,
) -> Tensor:
    """Distance-weighted soft-label votes ``[B, K]`` of points ``x`` ``[B, F]``.

    ``label_rows`` ``[P, K]`` are the rows actually voted with (distributions or raw rows). Only
    the ``k`` nearest prototypes vote (all when ``k`` is None); weights are normalised, which
    leaves the argmax of the plain inverse-distance sum unchanged and keeps scores bounded.
    """
    diff = x[:, None, :] - positions[None, :, :]
    # sqrt of a clamped square: finite gradients even when a point sits on a prototype
    dist = diff.pow(2).sum(-1).clamp_min(1e-12).sqrt()
    weights = (dist + eps).pow(-power)
    if k is not None and k < positions.shape[0]:
        nearest = dist.topk(k, dim=1, largest=False).indices
        mask = torch.zeros_like(weights).scatter_(1, nearest, 1.0)
        weights = weights * mask
    weights = weights / weights.sum(dim=1, keepdim=True)
    return weights @ label_rows


@dataclass
class Prototypes:
    """Learned prototypes: ``positions`` ``[P, F]``, raw ``labels`` ``[P, K]`` and the k-NN rule."""

    positions: Tensor
    labels: Tensor
    label_param: LabelParam = "simplex"
    k: int | None = None
    power: float = 1.0
    scale: float = 1.0  # inverse temperature the loss used (simplex labels)
    losses: list[float] = field(default_factory=list)

    @property
    def label_rows(self) -> Tensor:
        """The rows that vote: distributions for ``simplex``, the raw rows for ``raw``."""
        return self.labels.softmax(dim=1) if self.label_param == "simplex" else self.labels

    @property
    def label_distributions(self) -> Tensor:
        """Each prototype's label as a distribution (``softmax`` of raw rows), for pie charts."""
        return self.labels.softmax(dim=1)

    def scores(self, x: Tensor | np.ndarray) -> Tensor:
        x = torch.as_tensor(x, dtype=self.positions.dtype, device=self.positions.device)
        return knn_scores(x, self.positions, self.label_rows, k=self.k, power=self.power)

    def predict(self, x: Tensor | np.ndarray) -> Tensor:
        """Class index of each row of ``x``."""
        return self.scores(x).argmax(dim=1)

    def accuracy(self, x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> float:
        y = torch.as_tensor(y, device=self.positions.device)
        return float((self.predict(x) == y).double().mean())


def fit_prototypes(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    n_prototypes: int,
    *,
    num_classes: int | None = None,
    steps: int = 500,
    lr: float = 0.05,
    k: int | None = None,
    power: float = 1.0,
    label_param: LabelParam = "simplex",
    learn_positions: bool = True,
    learn_labels: bool = True,
    init: Init = "kmeans",
    positions: Tensor | np.ndarray | None = None,
    labels: Tensor | np.ndarray | None = None,
    seed: int = 0,
) -> Prototypes:
    """Learn prototype positions and soft labels for the k-NN rule of :func:`knn_scores`.

    Full-batch Adam on the cross-entropy of the scores, in float64 on the CPU (deterministic for
    a ``seed``). Freezing positions and/or labels gives the paper's Figure 3 variants (selection,
    generation, soft labels, combined). Initial positions come from ``init`` unless given;
    initial labels are one-hot for the class each prototype starts from unless given (for given
    positions: the majority class of the points nearest to it).
    """
    x_t = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    y_t = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    _check_inputs(x_t, y_t, n_prototypes, k, steps, label_param)
    K = int(y_t.max()) + 1 if num_classes is None else num_classes
    if int(y_t.max()) >= K or int(y_t.min()) < 0:
        raise ValueError(f"labels must lie in [0, {K}), got [{int(y_t.min())}, {int(y_t.max())}]")
    if positions is None:
        gen = torch.Generator().manual_seed(seed)
        pos0, cls0 = initial_positions(
            x_t, y_t, n_prototypes, K, init=init, seed=seed, generator=gen
        )
    else:
        pos0 = torch.as_tensor(np.asarray(positions), dtype=torch.float64).clone()
        if pos0.shape != (n_prototypes, x_t.shape[1]):
            raise ValueError(
                f"positions must be {(n_prototypes, x_t.shape[1])}, got {tuple(pos0.shape)}"
            )
        cls0 = _voronoi_majority(x_t, y_t, pos0, K)
    lab0 = F.one_hot(cls0, K).double() * (4.0 if label_param == "simplex" else 1.0)
    if labels is not None:
        lab0 = torch.as_tensor(np.asarray(labels), dtype=torch.float64).clone()
    if pos0.shape != (n_prototypes, x_t.shape[1]) or lab0.shape != (n_prototypes, K):
        raise ValueError(
            f"positions must be {(n_prototypes, x_t.shape[1])} and labels {(n_prototypes, K)}, "
            f"got {tuple(pos0.shape)} and {tuple(lab0.shape)}"
        )
    pos = pos0.requires_grad_(learn_positions)
    lab = lab0.requires_grad_(learn_labels)
    log_scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=label_param == "simplex")
    params = [t for t in (pos, lab, log_scale) if t.requires_grad]
    losses = _train(x_t, y_t, pos, lab, log_scale, params, steps, lr, k, power, label_param)
    scale = float(log_scale.detach().exp()) if label_param == "simplex" else 1.0
    return Prototypes(pos.detach(), lab.detach(), label_param, k, power, scale, losses)


def _train(
    x: Tensor,
    y: Tensor,
    pos: Tensor,
    lab: Tensor,
    log_scale: Tensor,
    params: list[Tensor],
    steps: int,
    lr: float,
    k: int | None,
    power: float,
    label_param: LabelParam,
) -> list[float]:
    """Full-batch Adam; nothing to learn (all frozen) just records the loss."""
    losses: list[float] = []
    opt = torch.optim.Adam(params, lr=lr) if params else None
    for _ in range(steps if opt is not None else 1):
        rows = lab.softmax(dim=1) if label_param == "simplex" else lab
        scores = knn_scores(x, pos, rows, k=k, power=power)
        if label_param == "simplex":
            scores = scores * log_scale.exp()
        loss = F.cross_entropy(scores, y)
        losses.append(float(loss.detach()))
        if opt is not None:
            opt.zero_grad()
            loss.backward()
            opt.step()
    return losses


def _check_inputs(
    x: Tensor, y: Tensor, n_prototypes: int, k: int | None, steps: int, label_param: str
) -> None:
    if x.dim() != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"x must be [B, F] and y [B], got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("need at least one training point")
    if n_prototypes < 1:
        raise ValueError(f"n_prototypes must be >= 1, got {n_prototypes}")
    if k is not None and not 1 <= k <= n_prototypes:
        raise ValueError(f"k must be in [1, {n_prototypes}] or None, got {k}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if label_param not in ("simplex", "raw"):
        raise ValueError(f"label_param must be 'simplex' or 'raw', got {label_param!r}")


def initial_positions(
    x: Tensor,
    y: Tensor,
    n_prototypes: int,
    num_classes: int,
    *,
    init: Init = "kmeans",
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Starting positions ``[P, F]`` and the class ``[P]`` each prototype starts as.

    ``kmeans``: k-means centroids of all points (majority class of each cluster), so fewer
    prototypes than classes start spread over the data; ``class_means``: the mean of class
    ``j mod K``; ``random_real``: a random real point of class ``j mod K`` (prototype selection).
    """
    if init == "kmeans":
        from sklearn.cluster import KMeans

        km = KMeans(n_prototypes, random_state=seed, n_init=10).fit(x.numpy())
        assign = torch.as_tensor(km.labels_, dtype=torch.int64)
        cls = [_majority(y[assign == j], num_classes) for j in range(n_prototypes)]
        return torch.as_tensor(km.cluster_centers_, dtype=x.dtype), torch.tensor(cls)
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
    cls = torch.arange(n_prototypes) % num_classes
    rows = []
    for c in cls.tolist():
        members = x[y == c]
        if members.shape[0] == 0:
            raise ValueError(f"class {c} has no points to start a prototype from")
        if init == "class_means":
            rows.append(members.mean(dim=0))
        else:
            i = int(torch.randint(members.shape[0], (1,), generator=generator))
            rows.append(members[i])
    return torch.stack(rows), cls


def _voronoi_majority(x: Tensor, y: Tensor, positions: Tensor, num_classes: int) -> Tensor:
    """Majority class of the points nearest to each given position (its starting class)."""
    assign = torch.cdist(x, positions).argmin(dim=1)
    return torch.tensor([_majority(y[assign == j], num_classes) for j in range(len(positions))])


def _majority(y: Tensor, num_classes: int) -> int:
    return int(torch.bincount(y, minlength=num_classes).argmax()) if y.numel() else 0


def load_iris_2d(features: Literal["petal", "pca"] = "petal") -> tuple[Tensor, Tensor, list[str]]:
    """Iris in two standardised dimensions for plotting: petal length/width or PCA-2.

    Returns ``x`` float64 ``[150, 2]``, ``y`` int64 ``[150]`` and the class names.
    """
    from sklearn.datasets import load_iris
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    iris = load_iris()
    if features == "petal":
        z = StandardScaler().fit_transform(iris.data[:, 2:4])
    elif features == "pca":
        z = PCA(2, svd_solver="full").fit_transform(StandardScaler().fit_transform(iris.data))
    else:
        raise ValueError(f"features must be 'petal' or 'pca', got {features!r}")
    names: Sequence[str] = iris.target_names
    return torch.as_tensor(z), torch.as_tensor(iris.target), [str(n) for n in names]
