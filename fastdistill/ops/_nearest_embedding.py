"""``fastdistill.ops.nearest_embedding``: k nearest table rows per query (the nearest-word
decoding of distilled text embeddings), kernel or reference, and ``embedding_table_norms``."""

from __future__ import annotations

import torch
from torch import Tensor

from fastdistill.ops import _backend, _library, reference
from fastdistill.ops._common import no_setup, not_differentiable
from fastdistill.ops.reference.nearest_embedding import embedding_table_norms

__all__ = ["embedding_table_norms", "nearest_embedding"]

_HALF_TYPES = (torch.float16, torch.bfloat16)
_NAME = "fastdistill::nearest_embedding"
_backward = not_differentiable(
    "fastdistill.ops.nearest_embedding is not differentiable: it selects table rows (the "
    "indices have no gradient). Call it on detached tensors or under torch.no_grad(); to "
    "differentiate a distance, recompute it from the returned indices, e.g. "
    "(queries - table[indices[:, 0]]).norm(dim=1)."
)


class _NearestEmbeddingReference(torch.autograd.Function):
    """Reference path with the kernel path's autograd behaviour: backward raises."""

    @staticmethod
    def forward(ctx, queries, table, k, metric, table_norms):
        values, indices = reference.nearest_embedding(queries, table, k, metric, table_norms)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values, grad_indices):
        return _backward(ctx, grad_values, grad_indices)


def _prepare(t: object) -> object:
    """Contiguous, and float16/bfloat16 computed in float32; anything else is passed through
    for the op's input checks to report."""
    if not isinstance(t, Tensor):
        return t
    if t.dtype in _HALF_TYPES:
        t = t.float()
    return t.contiguous()


def nearest_embedding(
    queries: Tensor,
    table: Tensor,
    k: int = 1,
    metric: str = "euclidean",
    table_norms: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest rows of ``table`` for each query, best first (brute force, exact).

    Args:
        queries: ``[N, D]`` float32 or float64 (float16/bfloat16 are computed in float32 and the
            values returned in the input dtype). Any strides.
        table: ``[V, D]`` embedding table, same dtype and device as ``queries``.
        k: how many rows per query, ``1 <= k <= V``.
        metric: ``"euclidean"``: values are Euclidean distances, ascending, computed as
            ``sqrt(max(||q||^2 - 2 q.t + ||t||^2, 0))``; ``"cosine"``: cosine similarities,
            descending (a zero row has similarity 0 with everything); ``"inner"``: inner
            products, descending.
        table_norms: optional ``embedding_table_norms(table, metric)`` (squared row norms for
            euclidean, row norms for cosine; must be None for inner), to reuse across calls.

    Returns:
        ``(values, indices)``, both ``[N, k]``: values in the queries' dtype, int64 indices into
        ``table``. Equal values come lower index first (deterministic, whatever the thread
        count); NaN values rank last. The kept set is the k best (squared distance, index) pairs.

    Memory stays bounded for any ``N * V``: the kernels compute scores one tile at a time (a
    matrix product per tile) and keep a running top-k per query; the ``[N, V]`` matrix is never
    built. Not differentiable (a selection): backpropagating through ``values`` raises; call it
    on detached tensors or under ``torch.no_grad()``.
    """
    out_dtype = queries.dtype if isinstance(queries, Tensor) else None
    queries, table, table_norms = _prepare(queries), _prepare(table), _prepare(table_norms)
    device = queries.device if isinstance(queries, Tensor) else torch.device("cpu")
    if _backend.runs_kernel("nearest_embedding", device):
        values, indices = torch.ops.fastdistill.nearest_embedding.default(
            queries, table, k, metric, table_norms
        )
    elif torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in (queries, table, table_norms)
    ):
        values, indices = _NearestEmbeddingReference.apply(queries, table, k, metric, table_norms)
    else:
        values, indices = reference.nearest_embedding(queries, table, k, metric, table_norms)
    if out_dtype in _HALF_TYPES:
        values = values.to(out_dtype)
    return values, indices


def _fake(queries: Tensor, table: Tensor, k: int, metric: str, table_norms: Tensor | None):
    torch._check(queries.dim() == 2, lambda: f"{_NAME}: `queries` must be a 2-D tensor [N, D]")
    torch._check(table.dim() == 2, lambda: f"{_NAME}: `table` must be a 2-D tensor [V, D]")
    torch._check(
        table.shape[1] == queries.shape[1],
        lambda: f"{_NAME}: `table` must have as many columns as `queries`",
    )
    torch._check(
        1 <= k <= table.shape[0],
        lambda: f"{_NAME}: k = {k} is out of range: need 1 <= k <= V = {table.shape[0]}",
    )
    n = queries.shape[0]
    values = queries.new_empty((n, k))
    indices = torch.empty((n, k), dtype=torch.int64, device=queries.device)
    return values, indices


@_library.on_load
def _register() -> None:
    torch.library.register_fake(_NAME)(_fake)
    torch.library.register_autograd(_NAME, _backward, setup_context=no_setup)
