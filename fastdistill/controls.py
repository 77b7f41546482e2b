"""Controls beside a distilled set's accuracy: what its soft labels and its optimisation buy.

Two sets of the same size and schedule are trained and tested the way the distilled set is:
the distilled images with hard (argmax) labels at the learned step sizes, and random real
examples per class at a step size chosen from the baselines' grid on training accuracy. A
distilled set that barely beats the second has learned little.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from fastdistill.baselines import run_baselines
from fastdistill.distilled import DistilledSet
from fastdistill.evaluate import Accuracy


def with_hard_labels(distilled: DistilledSet) -> DistilledSet:
    """The same data and step sizes with each label replaced by its argmax class (one-hot rows
    for ``soft``/``softmax`` sets, 0/1 for binary ones), frozen."""
    d = distilled
    if d.label_kind == "binary":
        labels = (d.labels.detach() > 0.5).to(d.labels.dtype)
        kind = "binary"
    else:
        classes = d.labels.detach().argmax(-1)
        labels = F.one_hot(classes, d.labels.shape[-1]).to(d.labels.dtype)
        kind = "soft"
    return dataclasses.replace(
        d,
        data=d.data.detach(),
        labels=labels,
        raw_lrs=d.raw_lrs.detach(),
        label_kind=kind,
        learn_labels=False,
        meta={**d.meta, "control": "hard_labels"},
    )


def control_accuracies(distiller: Any, *, draws: int = 5) -> dict[str, Accuracy | None]:
    """``hard_labels`` (None when the set's labels are not learned: it is its own control) and
    ``random_real`` accuracies for ``distiller``'s set, under its init distribution and test
    set. Under torchrun every rank calls it (the nets are shared out like ``evaluate``)."""
    c = distiller.config
    out: dict[str, Accuracy | None] = {"hard_labels": None}
    if distiller.distilled.learn_labels:
        with torch.no_grad():
            hard = with_hard_labels(distiller.distilled)
        out["hard_labels"] = distiller.evaluate(distilled=hard)
    real = run_baselines(
        distiller.data,
        distiller.model,
        per_class=c.images_per_class,
        steps=c.steps,
        epochs=c.epochs,
        classes_per_step=c.classes_per_step,
        init=c.init,
        n_nets=c.eval_nets,
        init_weights=distiller.distilled.init_weights,
        scheme=c.init_scheme,
        gain=c.init_gain,
        draws=draws,
        names=("random_real",),
        seed=c.seed + 3,
    )
    out["random_real"] = real["random_real"]
    return out
