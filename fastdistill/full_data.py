"""The full-data reference of the distillation ratio ``r_M``: one net trained on all real data.

A ratio is only as honest as its denominator. The reference is trained with a held-out
validation split, a cosine-decayed Adam step, early stopping and keep-best weights, and its own
curve is returned, so an undertrained reference shows instead of inflating ``r``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fastdistill.data.protocol import DistillData
from fastdistill.data.split import split_validation
from fastdistill.engine.functional import FlatModel
from fastdistill.engine.init import InitScheme, sample_weights
from fastdistill.engine.losses import outer_loss, predictions
from fastdistill.evaluate import accuracy
from fastdistill.models.text import first_order

#: A reference closer than this to always predicting the majority class has not learned.
MAJORITY_MARGIN = 0.02


@dataclass(frozen=True)
class FullDataOptions:
    """How the reference is trained. ``patience``: epochs without a validation gain before
    stopping (None: run every epoch); ``validation``: held-out fraction of the training set
    that picks the epoch kept (0: keep the last epoch, no early stopping)."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    validation: float = 0.1
    patience: int | None = 3
    cosine: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"full-data epochs and batch size must be >= 1, got {self.epochs}, "
                f"{self.batch_size}"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)) or self.weight_decay < 0:
            raise ValueError(
                f"full-data lr must be > 0 and weight decay >= 0, got {self.lr}, "
                f"{self.weight_decay}"
            )
        if not 0.0 <= self.validation < 1.0:
            raise ValueError(f"full-data validation must be in [0, 1), got {self.validation}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"full-data patience must be >= 1 or None, got {self.patience}")


@dataclass
class FullDataResult:
    """Test accuracy of the kept weights, with the curve that chose them."""

    test_accuracy: float
    validation_accuracy: float | None
    best_epoch: int
    epochs_run: int
    majority_accuracy: float
    curve: list[dict[str, float]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def warnings(self, distilled_accuracy: float | None = None) -> list[str]:
        """One line per reason not to trust a ratio built on this reference."""
        out = []
        full, base = self.test_accuracy, self.majority_accuracy
        if full - base < MAJORITY_MARGIN:
            out.append(
                f"warning: the full-data reference ({100 * full:.2f}%) is within "
                f"{100 * MAJORITY_MARGIN:.0f} points of always predicting the majority class "
                f"({100 * base:.2f}%): it has not learned; tune it (--full-data-lr, "
                "--full-data-epochs, --set full_data_batch_size=...) before reading r"
            )
        if distilled_accuracy is not None and full > 0 and distilled_accuracy > full:
            r = 100.0 * distilled_accuracy / full
            out.append(
                f"warning: r = {r:.1f} > 100: the distilled set ({100 * distilled_accuracy:.2f}%)"
                f" beats the full-data reference ({100 * full:.2f}%), so the reference is "
                "undertrained; see full_data.curve in report.json and train it longer or with "
                "another --full-data-lr"
            )
        return out


def majority_accuracy(train_y: Tensor, test_y: Tensor) -> float:
    """Test accuracy of always predicting the most frequent training class."""
    if train_y.numel() == 0 or test_y.numel() == 0:
        raise ValueError("empty label set")
    top = torch.bincount(train_y.flatten().long().cpu()).argmax()
    return float((test_y.flatten().long().cpu() == top).double().mean())


def train_full_data(
    module: nn.Module,
    data: DistillData,
    options: FullDataOptions | None = None,
    *,
    seed: int = 0,
    scheme: InitScheme = "xavier",
    **overrides: Any,
) -> FullDataResult:
    """Train ``module`` (init from ``scheme``) on ``data``'s training set and test the weights
    of the best validation epoch. Keyword ``overrides`` replace fields of ``options``."""
    opts = options or FullDataOptions()
    if overrides:
        opts = FullDataOptions(**{**asdict(opts), **overrides})
    device = data.train_x.device
    dtype = next(module.parameters()).dtype
    model = FlatModel(module)
    gen = torch.Generator(device=device).manual_seed(seed)
    w = sample_weights(model, 1, scheme=scheme, generator=gen, dtype=dtype).to(device)
    w.requires_grad_()
    train, val_x, val_y = data, None, None
    if opts.validation > 0:
        train, val_x, val_y = split_validation(data, opts.validation, seed)
    n = train.train_x.shape[0]
    steps = opts.epochs * math.ceil(n / opts.batch_size)
    opt = torch.optim.AdamW([w], lr=opts.lr, weight_decay=opts.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if opts.cosine else None

    def val_accuracy(weights: Tensor) -> float:
        acc = accuracy(
            model, weights, val_x, val_y, binary=data.binary, transform=data.model_inputs
        )
        return float(acc[0])

    best_w, best_val, best_epoch, stale = w.detach().clone(), -1.0, 0, 0
    curve: list[dict[str, float]] = []
    epoch = 0
    for epoch in range(1, opts.epochs + 1):
        loss_sum, correct = 0.0, 0
        perm = torch.randperm(n, generator=gen, device=device)
        for i in range(0, n, opts.batch_size):
            idx = perm[i : i + opts.batch_size]
            with first_order():
                logits = model.forward(
                    w, train.model_inputs(train.train_x[idx]).to(dtype), train=True
                )
            loss = outer_loss(logits, train.train_y[idx], data.binary).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            loss_sum += float(loss.detach()) * idx.numel()
            correct += int((predictions(logits.detach(), data.binary) == train.train_y[idx]).sum())
        point = {"epoch": epoch, "train_loss": loss_sum / n, "train_accuracy": correct / n}
        if val_x is not None:
            point["validation_accuracy"] = val_accuracy(w.detach())
            if point["validation_accuracy"] > best_val:
                best_w, best_val, best_epoch, stale = (
                    w.detach().clone(),
                    point["validation_accuracy"],
                    epoch,
                    0,
                )
            else:
                stale += 1
        curve.append(point)
        if val_x is not None and opts.patience is not None and stale >= opts.patience:
            break
    if val_x is None:
        best_w, best_epoch = w.detach(), epoch
    test = accuracy(
        model, best_w, data.test_x, data.test_y, binary=data.binary, transform=data.model_inputs
    )
    return FullDataResult(
        test_accuracy=float(test[0]),
        validation_accuracy=best_val if val_x is not None else None,
        best_epoch=best_epoch,
        epochs_run=epoch,
        majority_accuracy=majority_accuracy(data.train_y, data.test_y),
        curve=curve,
        options=asdict(opts),
    )


def options_from_config(config: Any, epochs: int | None = None) -> FullDataOptions:
    """The reference's options from a ``DistillConfig``'s ``full_data_*`` fields."""
    return FullDataOptions(
        epochs=epochs or config.full_data_epochs,
        lr=config.full_data_lr,
        batch_size=config.full_data_batch_size,
        weight_decay=config.full_data_weight_decay,
        validation=config.full_data_validation,
        patience=config.full_data_patience,
    )
