"""Pure-PyTorch reference of ``fastdistill::nearest_embedding`` (k nearest table rows per query).

Chunked over queries (``q @ table.T`` for a chunk of queries, then ``torch.topk``), so memory stays
bounded by ``_CHUNK_ELEMENTS`` scores plus the outputs. Same keys, ordering and tie rule as the
kernels (csrc/include/fastdistill/nearest_embedding.h):

* euclidean: ``key = clamp((||q||^2 - 2 q.t) + ||t||^2, min=0)``, ``value = sqrt(key)``;
* cosine: ``key = -((q.t * inv_q) * inv_t)`` with ``inv_x = 1/||x||`` (0 for a zero row),
  ``value = -key``;
* inner: ``key = -q.t``, ``value = -key``;

the k smallest keys are kept (NaN ranks last, after +inf), ties broken by the lower table
index, and the euclidean distances are then ordered by (value, index).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastdistill.ops.reference._checks import check_like
from fastdistill.ops.reference._math import sqrt_correctly_rounded

__all__ = ["METRICS", "check_nearest_embedding", "embedding_table_norms", "nearest_embedding"]

METRICS = ("euclidean", "cosine", "inner")
_OP = "fastdistill::nearest_embedding"
_DTYPES = (torch.float32, torch.float64)
_CHUNK_ELEMENTS = 1 << 22  # scores per query chunk (16 MiB in float32)
_NORM_CHUNK_ELEMENTS = 1 << 22  # float64 temporaries of the norm computation


def check_nearest_embedding(
    queries: Tensor, table: Tensor, k: int, metric: str, table_norms: Tensor | None
) -> None:
    """Same checks, exception types and messages as the C++ host code
    (csrc/include/fastdistill/nearest_embedding_checks.h)."""
    if not isinstance(queries, Tensor):
        raise TypeError(f"{_OP}: `queries` must be a torch.Tensor, got {type(queries).__name__}")
    if queries.dtype not in _DTYPES:
        raise TypeError(
            f"{_OP}: `queries` must have dtype float32 or float64, got {queries.dtype} "
            "(fastdistill.ops.nearest_embedding computes float16/bfloat16 in float32)"
        )
    if queries.dim() != 2:
        raise ValueError(
            f"{_OP}: `queries` must be a 2-D tensor [N, D], got shape {list(queries.shape)}"
        )
    check_like(_OP, "table", table, "queries", queries, same_shape=False)
    if table.dim() != 2:
        raise ValueError(
            f"{_OP}: `table` must be a 2-D tensor [V, D], got shape {list(table.shape)}"
        )
    if table.shape[1] != queries.shape[1]:
        raise ValueError(
            f"{_OP}: `table` must have as many columns as `queries` (D = {queries.shape[1]}), "
            f"got shape {list(table.shape)}"
        )
    if metric not in METRICS:
        raise ValueError(
            f"{_OP}: `metric` must be 'euclidean', 'cosine' or 'inner', got {metric!r}"
        )
    V = table.shape[0]
    if not 1 <= k <= V:
        raise ValueError(
            f"{_OP}: k = {k} is out of range: need 1 <= k <= V = {V} "
            "(the number of rows of `table`)"
        )
    if table_norms is not None:
        if metric == "inner":
            raise ValueError(
                f"{_OP}: `table_norms` must be None for metric 'inner' (it uses no norms)"
            )
        check_like(_OP, "table_norms", table_norms, "table", table, same_shape=False)
        if table_norms.dim() != 1 or table_norms.shape[0] != V:
            raise ValueError(
                f"{_OP}: `table_norms` must have shape [V] = [{V}], got shape "
                f"{list(table_norms.shape)}"
            )


def _row_sq_norms64(x: Tensor) -> Tensor:
    """Squared row norms in float64, chunked over rows (bounded temporaries)."""
    rows = max(1, _NORM_CHUNK_ELEMENTS // max(1, x.shape[1]))
    out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], rows):
        out[i : i + rows] = x[i : i + rows].double().square().sum(1)
    return out


def _norms(x: Tensor, metric: str) -> Tensor:
    sq = _row_sq_norms64(x)
    return (sq if metric == "euclidean" else sqrt_correctly_rounded(sq)).to(x.dtype)


def embedding_table_norms(table: Tensor, metric: str = "euclidean") -> Tensor | None:
    """Precomputed ``table_norms`` for ``nearest_embedding``: the squared row norms of ``table``
    (metric "euclidean"), its row norms ("cosine"), or None ("inner" uses no norms). Accumulated
    in float64 and rounded to the table's dtype, as the kernels compute them. Reuse the result
    across calls with the same table."""
    if metric not in METRICS:
        raise ValueError(
            f"{_OP}: `metric` must be 'euclidean', 'cosine' or 'inner', got {metric!r}"
        )
    if not isinstance(table, Tensor) or table.dim() != 2:
        shape = list(table.shape) if isinstance(table, Tensor) else type(table).__name__
        raise ValueError(f"{_OP}: `table` must be a 2-D tensor [V, D], got {shape}")
    if metric == "inner":
        return None
    with torch.no_grad():
        return _norms(table, metric)


def _aux(norms: Tensor, metric: str) -> Tensor:
    """Per-row factor of the key formula: squared norms, or 1/norm (0 for a zero row)."""
    if metric == "euclidean":
        return norms
    return torch.where(norms > 0, norms.reciprocal(), torch.zeros_like(norms))


def _keys(s: Tensor, q_aux: Tensor | None, t_aux: Tensor | None, metric: str) -> Tensor:
    """Scores ``q . t`` of a chunk -> keys (smaller is better; zero keys as +0)."""
    if metric == "euclidean":
        return ((q_aux[:, None] - 2 * s) + t_aux[None, :]).clamp_min(0)
    key = -(s * q_aux[:, None] * t_aux[None, :]) if metric == "cosine" else -s
    return torch.where(key == 0, torch.zeros_like(key), key)


def _select(key: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k smallest keys of each row, sorted by (key, index), NaN last: ``torch.topk``, plus
    a full stable sort of the (rare) rows where topk's choice among equal keys could matter."""
    vals, cols = torch.topk(key, k, dim=1, largest=False, sorted=True)
    kth = vals[:, -1:]
    # A tie straddles the k-th place when the row holds more keys equal to the k-th than topk
    # kept; NaN rows are also resolved by the stable sort (NaN != NaN).
    ambiguous = ((key == kth).sum(1) != (vals == kth).sum(1)) | key.isnan().any(1)
    # Order the kept entries by (key, index): sort by index, then stable sort by key.
    cols, order = cols.sort(dim=1)
    vals, order = vals.gather(1, order).sort(dim=1, stable=True)
    cols = cols.gather(1, order)
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero().squeeze(1)
        svals, scols = key[rows].sort(dim=1, stable=True)
        vals[rows] = svals[:, :k]
        cols[rows] = scols[:, :k]
    return vals, cols


def _by_value_then_index(values: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    indices, order = indices.sort(dim=1)
    values, order = values.gather(1, order).sort(dim=1, stable=True)
    return values, indices.gather(1, order)


def nearest_embedding(
    queries: Tensor,
    table: Tensor,
    k: int = 1,
    metric: str = "euclidean",
    table_norms: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference ``nearest_embedding``: ``(values, indices)``, both ``[N, k]``, best first.

    Not differentiable (selection): call it on detached tensors or under ``torch.no_grad()``;
    ``fastdistill.ops.nearest_embedding`` raises if gradients are requested through ``values``.
    """
    check_nearest_embedding(queries, table, k, metric, table_norms)
    N, V = queries.shape[0], table.shape[0]
    values = queries.new_empty((N, k))
    indices = torch.empty((N, k), dtype=torch.int64, device=queries.device)
    if N == 0:
        return values, indices
    q_aux = t_aux = None
    if metric != "inner":
        tn = table_norms if table_norms is not None else _norms(table, metric)
        t_aux = _aux(tn, metric)
    chunk = max(1, _CHUNK_ELEMENTS // V)
    for i in range(0, N, chunk):
        q = queries[i : i + chunk]
        if metric != "inner":
            q_aux = _aux(_norms(q, metric), metric)
        key, cols = _select(_keys(q @ table.T, q_aux, t_aux, metric), k)
        if metric == "euclidean":
            # correctly rounded like the kernels' sqrt (torch's may be 1 ulp off)
            vals, cols = _by_value_then_index(sqrt_correctly_rounded(key), cols)
        else:
            vals = 0 - key
        values[i : i + chunk] = vals
        indices[i : i + chunk] = cols
    return values, indices
