"""A drop-in hypergradient for scripts written against the original dataset-distillation code.

The original trainer unrolls a list of ``steps`` — ``(data, label, lr)`` per inner step, the same
tensor objects repeated once per epoch — from flat weights ``w`` (``model.forward_with_param(x,
w)``), then its ``backward`` returns, last step first, each step's data, label and step-size
tensors with their gradients; the script passes them to ``torch.autograd.backward`` so the
gradients reach the leaves (raw step sizes behind a softplus, learnable labels) and steps an
optimiser. :func:`steps_hypergradient` takes the same inputs and returns the same lists,
computed by fastdistill's engines (``adjoint`` by default: memory flat in the number of steps),
so such a script swaps one call::

    hg = steps_hypergradient(model, w, steps, real_x, real_y)
    hg.backward()            # = torch.autograd.backward(datas + lrs [+ labels], gradients)
    optimizer.step()

Conventions (those of the original code and of ``../shared/data/golden-reference``): the flat
layout is the module's parameters in order, each flattened; the inner loss of a step is the
batch mean of the soft cross-entropy with the label rows as weights (integer class labels: plain
cross-entropy, labels not learned); ``w <- w - lr * grad``; the outer loss is the mean
cross-entropy on the real batch; several nets (``w`` of shape ``[B, P]``) average their losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdistill.engine import FlatModel, hypergradient

__all__ = ["StepsHypergradient", "steps_hypergradient"]

Step = tuple[Tensor, Tensor, Tensor]


@dataclass
class StepsHypergradient:
    """The original ``backward``'s lists, last step first, plus the outer loss."""

    loss: Tensor  # mean outer loss over nets (detached)
    datas: list[Tensor]
    gdatas: list[Tensor]
    lrs: list[Tensor]
    glrs: list[Tensor]
    labels: list[Tensor]  # empty when labels are not learned
    glabels: list[Tensor]

    def backward(self) -> None:
        """Accumulate every gradient into its leaf, as the original scripts do."""
        pairs = [
            (t, g)
            for t, g in zip(
                self.datas + self.lrs + self.labels, self.gdatas + self.glrs + self.glabels
            )
            if t.requires_grad
        ]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])


def _inverse_softplus(lr: Tensor) -> Tensor:
    if torch.any(lr <= 0):
        raise ValueError(f"step sizes must be positive, got {lr.tolist()}")
    return lr + torch.log(-torch.expm1(-lr))  # log(exp(lr) - 1), stable for small and large lr


def steps_hypergradient(
    model: nn.Module | FlatModel,
    w: Tensor,
    steps: Sequence[Step],
    real_x: Tensor,
    real_y: Tensor,
    *,
    learn_labels: bool | None = None,
    engine: str = "adjoint",
    **engine_options,
) -> StepsHypergradient:
    """Hypergradients of the original code's unrolled inner loop, in its ``backward``'s layout.

    Args:
        model: the network (its parameters fix the flat layout; its own values are not used).
        w: flat initial weights ``[P]`` of one net or ``[B, P]`` of B nets.
        steps: ``(data [N, ...], label, lr)`` per inner step, in order; ``label`` is ``[N, K]``
            label rows or ``[N]`` class indices; ``lr`` a positive scalar tensor (the original's
            ``softplus(raw_lr)``).
        real_x, real_y: the real batch of the outer loss.
        learn_labels: return label gradients; default: whether any label requires grad.
        engine, engine_options: as for :func:`fastdistill.hypergradient`.
    """
    if not steps:
        raise ValueError("steps is empty: need at least one (data, label, lr)")
    flat = model if isinstance(model, FlatModel) else FlatModel(model)
    w0 = w.detach().reshape(-1, flat.num_params) if w.dim() == 1 else w.detach()
    data = [d for d, _, _ in steps]
    if len({tuple(d.shape) for d in data}) != 1:
        raise ValueError(
            f"every step's data must have one shape, got {[tuple(d.shape) for d in data]}"
        )
    labels = [lab for _, lab, _ in steps]
    hard = not labels[0].is_floating_point()
    if any(lab.is_floating_point() == hard for lab in labels):
        raise ValueError("labels must all be class indices or all be label rows")
    if learn_labels is None:
        learn_labels = any(lab.requires_grad for lab in labels)
    if hard and learn_labels:
        raise ValueError("class-index labels cannot be learned; pass label rows [N, K]")
    if hard:  # class indices -> one-hot rows of the model's output width
        k = int(flat.forward(w0[:1], data[0][:1].to(w0), train=False).shape[-1])
        rows = [F.one_hot(lab, k).to(w0) for lab in labels]
    else:
        rows = [lab.detach().to(w0) for lab in labels]
    lrs = torch.stack([lr.detach().reshape(()) for _, _, lr in steps]).to(w0)
    raw = _inverse_softplus(lrs)
    # One distilled batch per step (S = T): gradients come back per step, as the original's do.
    hg = hypergradient(
        flat,
        w0,
        torch.stack([d.detach() for d in data]).to(w0),
        torch.stack(rows),
        raw,
        real_x.to(w0),
        real_y.to(w0.device),
        learn_labels=learn_labels,
        engine=engine,
        **engine_options,
    )
    glr = hg.grad_raw_lrs / torch.sigmoid(raw)  # d lr / d raw = sigmoid(raw)
    order = range(len(steps) - 1, -1, -1)  # the original's backward runs last step first
    return StepsHypergradient(
        loss=hg.outer_loss.mean(),
        datas=[data[t] for t in order],
        gdatas=[hg.grad_data[t].to(data[t]) for t in order],
        lrs=[steps[t][2] for t in order],
        glrs=[glr[t].reshape(steps[t][2].shape).to(steps[t][2]) for t in order],
        labels=[labels[t] for t in order] if learn_labels else [],
        glabels=[hg.grad_labels[t].to(labels[t]) for t in order] if learn_labels else [],
    )
