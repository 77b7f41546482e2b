"""Evaluation: train nets on a distilled set by plain GD, measure test accuracy (docs/algorithm.md §4).

Nets are trained and tested as one batch (``[B, P]`` weights), chunked to bound memory, so
evaluating 200 random-init nets costs a few batched passes, not 200 Python loops.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from fastdistill.distilled import DistilledSet
from fastdistill.distributed import all_reduce_sum, rank_and_world
from fastdistill.engine.functional import FlatModel
from fastdistill.engine.init import InitScheme, sample_weights
from fastdistill.engine.losses import inner_loss, predictions
from fastdistill.models.text import first_order


@dataclass
class Accuracy:
    """Accuracies of ``n_nets`` nets, with mean and unbiased standard deviation."""

    accuracies: Tensor

    @property
    def n_nets(self) -> int:
        return self.accuracies.numel()

    @property
    def mean(self) -> float:
        return float(self.accuracies.double().mean())

    @property
    def std(self) -> float:
        return float(self.accuracies.double().std(unbiased=True)) if self.n_nets > 1 else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "std": self.std, "n_nets": self.n_nets}

    def __str__(self) -> str:
        if self.n_nets == 1:
            return f"{100 * self.mean:.2f}%"
        return f"{100 * self.mean:.2f} +- {100 * self.std:.2f}% over {self.n_nets} nets"


def train_on_distilled(model: FlatModel, w0: Tensor, distilled: DistilledSet) -> Tensor:
    """``T`` plain GD steps with the learned data, labels and step sizes; returns ``w_T``."""
    d = distilled
    lrs = d.lrs.to(w0)
    w = w0.detach()
    for t in range(d.total_steps):
        s = t % d.steps
        with torch.enable_grad(), first_order():
            w = w.requires_grad_()
            loss = inner_loss(
                model.forward(w, d.data[s].detach(), train=True), d.labels[s].detach(), d.label_kind
            ).sum()
            (g,) = torch.autograd.grad(loss, w)
        w = (w - lrs[t] * g).detach()
    return w


@torch.no_grad()
def accuracy(
    model: FlatModel,
    w: Tensor,
    x: Tensor,
    y: Tensor,
    *,
    binary: bool = False,
    batch_size: int = 2048,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Test accuracy ``[B]`` of each of the B nets in ``w`` on all of ``(x, y)``.

    ``transform`` maps a chunk of stored examples to model inputs (e.g. token ids ->
    embeddings), so the whole test set is never expanded at once.
    """
    if x.shape[0] == 0:
        raise ValueError("empty test set")
    correct = torch.zeros(w.shape[0], dtype=torch.long, device=w.device)
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].to(w.device)
        xb = (transform(xb) if transform is not None else xb).to(w.dtype)
        yb = y[i : i + batch_size].to(w.device)
        with first_order():
            pred = predictions(model.forward(w, xb, train=False), binary)
        correct += (pred == yb).sum(-1)
    return correct.double() / x.shape[0]


def evaluate_distilled(
    distilled: DistilledSet,
    model: FlatModel,
    test_x: Tensor,
    test_y: Tensor,
    *,
    init: str = "fixed",
    n_nets: int = 200,
    init_weights: Tensor | None = None,
    scheme: InitScheme = "xavier",
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    chunk: int = 50,
    batch_size: int = 2048,
    transform: Callable[[Tensor], Tensor] | None = None,
    distribute: bool = True,
) -> Accuracy:
    """Accuracy of nets trained on ``distilled``.

    ``init="fixed"`` trains the single fixed-init net (``init_weights``, default the set's own);
    ``init="random"`` trains ``n_nets`` fresh nets drawn from ``scheme``. Another architecture
    than the one distilled with (cross-architecture evaluation) needs ``init="random"`` or its
    own ``init_weights``. Under torchrun every rank calls it and the random-init chunks are
    shared out; ``distribute=False`` trains them all here (a caller sharing out whole calls).
    """
    device = distilled.data.device
    binary = distilled.label_kind == "binary"
    if init == "fixed":
        w0 = init_weights if init_weights is not None else distilled.init_weights
        if w0 is None:
            raise ValueError("fixed-init evaluation needs init weights; this set has none")
        w0 = w0.reshape(-1, model.num_params).to(device, distilled.data.dtype)
        return Accuracy(
            accuracy(
                model,
                train_on_distilled(model, w0, distilled),
                test_x,
                test_y,
                binary=binary,
                batch_size=batch_size,
                transform=transform,
            )
        )
    if init != "random":
        raise ValueError(f"init must be 'fixed' or 'random', got {init!r}")
    # Under torchrun chunk c is trained by rank c mod world; every rank draws every chunk's
    # weights (the generator advances alike) and the accuracies meet in one exact all-reduce.
    rank, world = rank_and_world() if distribute else (0, 1)
    accs = torch.zeros(n_nets, dtype=torch.float64, device=device)
    for c, start in enumerate(range(0, n_nets, chunk)):
        b = min(chunk, n_nets - start)
        w0 = sample_weights(
            model, b, scheme=scheme, gain=gain, generator=generator, dtype=distilled.data.dtype
        ).to(device)
        if c % world != rank:
            continue
        w = train_on_distilled(model, w0, distilled)
        accs[start : start + b] = accuracy(
            model, w, test_x, test_y, binary=binary, batch_size=batch_size, transform=transform
        ).double()
    if world > 1:
        (accs,) = all_reduce_sum([accs])  # one non-zero addend per net: exact
    return Accuracy(accs)


def skip_random_nets(
    model: FlatModel,
    n_nets: int,
    *,
    scheme: InitScheme = "xavier",
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    chunk: int = 50,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Advance ``generator`` exactly as a random-init :func:`evaluate_distilled` call with
    these arguments would, without training: a rank that leaves a call to another rank stays
    in step with the draws that follow."""
    for start in range(0, n_nets, chunk):
        b = min(chunk, n_nets - start)
        sample_weights(model, b, scheme=scheme, gain=gain, generator=generator, dtype=dtype)


def distillation_ratio(distilled_accuracy: float, full_accuracy: float) -> float:
    """``r_M = 100 * distilled / full`` (docs/algorithm.md §4)."""
    if full_accuracy <= 0 or math.isnan(full_accuracy):
        raise ValueError(f"full-data accuracy must be positive, got {full_accuracy}")
    return 100.0 * distilled_accuracy / full_accuracy


def minimum_distilled_size(
    accuracies: Mapping[int, float], full_accuracy: float, percent: float = 90.0
) -> int | None:
    """The smallest number of distilled samples ``M`` whose ratio ``r_M`` reaches ``percent``
    (the paper's "A% distillation size"); None when no size in ``accuracies`` reaches it."""
    if not percent > 0:
        raise ValueError(f"percent must be positive, got {percent}")
    reached = [
        m for m, acc in accuracies.items() if distillation_ratio(acc, full_accuracy) >= percent
    ]
    return min(reached) if reached else None
