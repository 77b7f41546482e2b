"""Inner (distilled-data) and outer (real-data) losses, per net of a batch.

Both take logits ``[B, N, K]`` from ``FlatModel.forward`` and return one loss per net ``[B]``.
Summing the inner losses over nets gives each net's own gradient in one backward pass, because
net b's loss depends only on row b of the ``[B, P]`` weights.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from fastdistill import ops

LabelKind = Literal["soft", "softmax", "binary"]


def inner_loss(logits: Tensor, labels: Tensor, kind: LabelKind = "soft") -> Tensor:
    """Per-net loss on distilled data.

    * ``soft``: ``-mean_i sum_c y_ic log_softmax(z_i)_c`` with the raw (unconstrained) label
      rows as weights; negative and >1 entries are allowed and matter.
    * ``softmax``: the same with ``softmax(y_i)`` as the target distribution.
    * ``binary``: BCE-with-logits against one real-valued label per example.

    Logits ``[..., N, K]`` (``K = 1`` for binary); labels broadcast to them (``[N, K]``, or
    ``[N]`` for binary). The per-example losses come from ``fastdistill.ops.soft_label_loss``
    over the flattened rows: fused kernels (forward, gradient and the Hessian-vector products
    of the engine's double backward) when the extension is loaded, the same formulas in
    PyTorch otherwise. Rows are independent, so this also works under ``torch.vmap``.
    """
    if kind == "binary":
        if logits.shape[-1] != 1:  # not one logit per example: elementwise BCE, as before
            z = logits.squeeze(-1)
            y = labels.to(z.dtype).expand_as(z)
            return F.binary_cross_entropy_with_logits(z, y, reduction="none").mean(-1)
        rows = logits.shape[:-1]
        y = labels.to(logits.dtype).expand(rows).reshape(-1)
        return ops.soft_label_loss(logits.reshape(-1, 1), y, kind).view(rows).mean(-1)
    k = logits.shape[-1]
    y = labels.to(logits.dtype).expand(logits.shape).reshape(-1, k)
    per_example = ops.soft_label_loss(logits.reshape(-1, k), y, kind)
    return per_example.view(logits.shape[:-1]).mean(-1)


def outer_loss(logits: Tensor, targets: Tensor, binary: bool = False) -> Tensor:
    """Per-net hard-label loss on a real batch: cross-entropy, or BCE-with-logits if binary."""
    if binary:
        z = logits.squeeze(-1)
        return F.binary_cross_entropy_with_logits(
            z, targets.to(z.dtype).expand_as(z), reduction="none"
        ).mean(-1)
    b, n, k = logits.shape
    flat = F.cross_entropy(logits.reshape(b * n, k), targets.repeat(b), reduction="none")
    return flat.view(b, n).mean(-1)


def predictions(logits: Tensor, binary: bool = False) -> Tensor:
    """Class predictions ``[B, N]``; binary tasks predict positive when the logit is > 0."""
    if binary:
        return (logits.squeeze(-1) > 0).long()
    return logits.argmax(-1)
