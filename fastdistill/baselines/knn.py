"""k-NN classifiers over flattened model inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastdistill.data.protocol import DistillData
from fastdistill.distilled import DistilledSet
from fastdistill.ops import nearest_embedding


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
