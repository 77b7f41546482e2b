"""fastdistill::nearest_embedding: kernels vs reference vs a float64 truth, tiles, ties, layouts,
opcheck, errors, backends."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from fd_op_utils import DEVICES, DTYPES, eps, make

from fastdistill import ops
from fastdistill.ops import reference

METRICS = ["euclidean", "cosine", "inner"]
REPO = Path(__file__).resolve().parents[2]

# (N, V, D): CPU tiles are 256 queries (fewer when N is small) x 1024 table rows, CUDA tiles
# 2048 x 4096: sizes below, at and across those boundaries, V smaller than one tile.
SHAPES = [
    (1, 1, 3),
    (7, 5, 4),
    (33, 1023, 16),
    (257, 1025, 8),
    (300, 2049, 33),
    (2050, 70, 5),
    (5, 4097, 12),
]


# ----------------------------------------------------------------------------------- truth
def truth(q: torch.Tensor, t: torch.Tensor, metric: str):
    """float64 keys [N, V] (smaller is better, same formulas as the op), their error scale,
    and the keys -> values map."""
    q64, t64 = q.double().cpu(), t.double().cpu()
    s = q64 @ t64.T
    abs_s = q64.abs() @ t64.abs().T
    qn, tn = q64.square().sum(1), t64.square().sum(1)
    if metric == "euclidean":
        key = torch.cdist(q64, t64, compute_mode="donot_use_mm_for_euclid_dist").square()
        return key, qn[:, None] + tn[None, :] + 2 * abs_s
    if metric == "cosine":
        iq = torch.where(qn > 0, qn.rsqrt(), torch.zeros_like(qn))
        it = torch.where(tn > 0, tn.rsqrt(), torch.zeros_like(tn))
        return -(s * iq[:, None] * it[None, :]), abs_s * iq[:, None] * it[None, :] + 1
    return -s, abs_s


def to_keys(values: torch.Tensor, metric: str) -> torch.Tensor:
    v = values.double().cpu()
    return v.square() if metric == "euclidean" else -v


def check_result(values, indices, q, t, k, metric, tol_factor=None):
    """Shapes, ordering, tie rule, and values/ranks against the float64 truth."""
    N, D = q.shape
    V = t.shape[0]
    assert values.shape == (N, k) and indices.shape == (N, k)
    assert values.dtype == q.dtype and indices.dtype == torch.int64
    assert values.device == q.device and indices.device == q.device
    if N == 0:
        return
    idx = indices.cpu()
    assert int(idx.min()) >= 0 and int(idx.max()) < V
    assert (idx.sort(1).values.diff(dim=1) > 0).all(), "indices repeat within a row"
    v = values.double().cpu()
    # sorted best first; equal values lower index first
    d = v.diff(dim=1)
    assert ((d >= 0) if metric == "euclidean" else (d <= 0)).all(), "values not sorted"
    assert (idx.diff(dim=1)[d == 0] > 0).all(), "equal values not in index order"
    key, scale = truth(q, t, metric)
    tol = (tol_factor or max(16, D)) * eps(q.dtype) * scale
    got = to_keys(values, metric)
    want = key.gather(1, idx)
    bound = tol.gather(1, idx) + (2 * eps(q.dtype) * want.abs() if metric == "euclidean" else 0)
    bad = (got - want).abs() > bound
    assert not bad.any(), f"values off at {bad.nonzero()[:5].tolist()}"
    # the r-th value is the r-th best (within rounding)
    best = key.sort(1).values[:, :k]
    row_tol = tol.max(1, keepdim=True).values + bound.max(1, keepdim=True).values
    assert ((got - best).abs() <= row_tol).all(), "not the k best rows"


def _ks(V):
    return sorted({1, min(5, V), V})


# ---------------------------------------------------------------------- kernel vs reference
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernel_and_reference_match_truth(kernels, device, dtype, metric, shape):
    N, V, D = shape
    q = make((N, D), dtype, device, seed=1)
    t = make((V, D), dtype, device, seed=2)
    for k in _ks(V):
        if k == V and V > 2100 and device == "cpu":
            continue  # the O(V) buffers per query are exercised by smaller shapes
        vk, ik = kernels.nearest_embedding(q, t, k, metric, None)
        check_result(vk, ik, q, t, k, metric)
        vr, ir = reference.nearest_embedding(q, t, k, metric)
        check_result(vr, ir, q, t, k, metric)
        if dtype == torch.float64:  # random data: no near-ties at float64 precision
            assert torch.equal(ik, ir)
            torch.testing.assert_close(vk, vr, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", METRICS)
def test_large_table(kernels, device, metric):
    q = make((40, 64), torch.float32, device, seed=3)
    t = make((30_011, 64), torch.float32, device, seed=4)
    for k in (1, 5, 200):
        v, i = ops.nearest_embedding(q, t, k, metric)
        check_result(v, i, q, t, k, metric)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 5, 129, 300])
def test_large_k_and_monotone_scores(kernels, device, k):
    """Every new table row beats the previous ones (worst case of the running top-k: many
    buffer compactions / merges), and k past the CUDA fast path (128)."""
    V, D = 3000, 4
    t = torch.zeros(V, D, dtype=torch.float64)
    t[:, 0] = torch.arange(V, dtype=torch.float64) / V
    q = torch.ones(3, D, dtype=torch.float64)
    q[1] = -1
    t, q = t.to(device), q.to(device)
    for metric in METRICS:
        v, i = kernels.nearest_embedding(q, t, k, metric, None)
        check_result(v, i, q, t, k, metric)
        vr, ir = reference.nearest_embedding(q, t, k, metric)
        assert torch.equal(i.cpu(), ir.cpu())
        torch.testing.assert_close(v.cpu(), vr.cpu())
        if metric == "inner":
            expected = torch.arange(V - 1, V - 1 - k, -1)
            assert torch.equal(i[0].cpu(), expected)
            assert torch.equal(i[1].cpu(), torch.arange(k))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_against_cdist_topk(kernels, device, dtype):
    q = make((500, 100), dtype, device, seed=5)
    t = make((3000, 100), dtype, device, seed=6)
    for k in (1, 10):
        v, i = ops.nearest_embedding(q, t, k)
        cv, ci = torch.cdist(q, t).topk(k, dim=1, largest=False)
        torch.testing.assert_close(v, cv, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=0)
        agree = (i == ci).double().mean().item()
        assert agree > 0.99, agree


# ------------------------------------------------------------------------------------- ties
def _int_data(shape, seed, device, dtype, lo=-2, hi=3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, shape, generator=gen).to(dtype).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
def test_ties_lower_index_first(kernels, device, dtype, metric):
    """Small integers: every product and norm is exact, so there are many exact ties; the
    result must be the stable order (lower index first) in both backends."""
    q = _int_data((300, 3), 7, device, dtype)
    t = _int_data((2500, 3), 8, device, dtype)
    t[100:110] = t[5]  # duplicates, also across tiles
    t[2000] = t[5]
    for k in (1, 7, 64, 200, 2500):
        vk, ik = kernels.nearest_embedding(q, t, k, metric, None)
        vr, ir = reference.nearest_embedding(q, t, k, metric)
        assert torch.equal(ik.cpu(), ir.cpu()) and torch.equal(vk.cpu(), vr.cpu())
        check_result(vk, ik, q, t, k, metric)
        if metric != "cosine":  # exact keys: the stable sort is the truth
            key, _ = truth(q, t, metric)
            assert torch.equal(ik.cpu(), key.sort(dim=1, stable=True).indices[:, :k])


@pytest.mark.parametrize("device", DEVICES)
def test_all_equal_rows_and_zero_rows(kernels, device):
    # Integer-valued queries: every score of an equal row is then computed exactly, whatever
    # order the tiled matrix product sums in, so equal rows really tie (random floats can give
    # equal rows scores one ulp apart, depending on where a row falls in the GEMM's blocking).
    t = torch.ones(50, 4, device=device)
    q = torch.randint(-3, 4, (6, 4), generator=torch.Generator().manual_seed(0)).float().to(device)
    q[0] = 0
    for metric in METRICS:
        v, i = kernels.nearest_embedding(q, t, 5, metric, None)
        assert torch.equal(i.cpu(), torch.arange(5).expand(6, 5))
    # cosine with zero rows: similarity 0 (never NaN), ties by index
    t[3] = 0
    v, i = kernels.nearest_embedding(q, t, 50, "cosine", None)
    assert not v.isnan().any()
    assert (v[0] == 0).all() and torch.equal(i[0].cpu(), torch.arange(50))
    zero_col = (i == 3).nonzero()[:, 1]
    assert (v.gather(1, zero_col[:, None]) == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_nan_ranks_last(kernels, device):
    q = make((4, 5), torch.float32, device, seed=1)
    t = make((9, 5), torch.float32, device, seed=2)
    t[2, 1] = float("nan")
    for metric in METRICS:
        v, i = kernels.nearest_embedding(q, t, 9, metric, None)
        vr, ir = reference.nearest_embedding(q, t, 9, metric)
        assert (i[:, -1] == 2).all() and v[:, -1].isnan().all()
        assert torch.equal(i.cpu(), ir.cpu())
        torch.testing.assert_close(v.cpu(), vr.cpu(), equal_nan=True)


# ------------------------------------------------------------------------ layouts, options
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_inputs(kernels, device, dtype):
    qb = make((40, 90), dtype, device, seed=1)
    tb = make((1100, 80), dtype, device, seed=2)
    q = qb.t()[::2]  # [45, 40] transposed, strided
    t = tb[:, ::2]  # [1100, 40]
    assert not (q.is_contiguous() or t.is_contiguous())
    for metric in METRICS:
        expected = reference.nearest_embedding(q.contiguous(), t.contiguous(), 5, metric)
        for fn in (kernels.nearest_embedding, reference.nearest_embedding):
            v, i = fn(q, t, 5, metric, None)
            check_result(v, i, q, t, 5, metric)
        v, i = ops.nearest_embedding(q, t, 5, metric)
        check_result(v, i, q, t, 5, metric)
        if dtype == torch.float64:
            assert torch.equal(i.cpu(), expected[1].cpu())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_precomputed_norms(kernels, device, dtype, metric):
    q = make((70, 20), dtype, device, seed=1)
    t = make((1500, 20), dtype, device, seed=2)
    t[7] = 0
    norms = ops.embedding_table_norms(t, metric)
    assert norms.shape == (1500,) and norms.dtype == dtype and norms.device == t.device
    sq = t.double().square().sum(1)
    torch.testing.assert_close(norms.double(), sq if metric == "euclidean" else sq.sqrt())
    for fn in (kernels.nearest_embedding, reference.nearest_embedding):
        v0, i0 = fn(q, t, 5, metric, None)
        v1, i1 = fn(q, t, 5, metric, norms)
        assert torch.equal(i0, i1)
        # the op's own norms may differ from the helper's in the last bit (summation order)
        torch.testing.assert_close(v0, v1, rtol=4 * eps(dtype), atol=4 * eps(dtype))
    assert ops.embedding_table_norms(t, "inner") is None


@pytest.mark.parametrize("device", DEVICES)
def test_empty_queries(kernels, device):
    q = torch.empty(0, 6, device=device)
    t = torch.randn(10, 6, device=device)
    for fn in (kernels.nearest_embedding, reference.nearest_embedding):
        v, i = fn(q, t, 3, "euclidean", None)
        assert v.shape == (0, 3) and i.shape == (0, 3) and i.dtype == torch.int64
    v, i = ops.nearest_embedding(q, t, 3, "cosine")
    assert v.shape == (0, 3)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_dim_embeddings(kernels, device):
    q, t = torch.empty(3, 0, device=device), torch.empty(4, 0, device=device)
    for metric in METRICS:
        v, i = kernels.nearest_embedding(q, t, 2, metric, None)
        assert (v == 0).all() and torch.equal(i.cpu(), torch.tensor([[0, 1]] * 3))


@pytest.mark.parametrize("device", DEVICES)
def test_half_types_computed_in_float32(kernels, device):
    q = make((20, 16), torch.float32, device, seed=1)
    t = make((300, 16), torch.float32, device, seed=2)
    for dtype in (torch.float16, torch.bfloat16):
        qh, th = q.to(dtype), t.to(dtype)
        v, i = ops.nearest_embedding(qh, th, 4, "cosine")
        v32, i32 = ops.nearest_embedding(qh.float(), th.float(), 4, "cosine")
        assert v.dtype == dtype and torch.equal(i, i32)
        torch.testing.assert_close(v, v32.to(dtype))


def test_deterministic_across_threads(kernels):
    q = make((600, 32), torch.float32, "cpu", seed=1)
    t = make((5000, 32), torch.float32, "cpu", seed=2)
    first = kernels.nearest_embedding(q, t, 10, "euclidean", None)
    threads = torch.get_num_threads()
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            again = kernels.nearest_embedding(q, t, 10, "euclidean", None)
            assert torch.equal(first[1], again[1])
    finally:
        torch.set_num_threads(threads)


# -------------------------------------------------------------------- wrapper and backends
@pytest.mark.parametrize("device", DEVICES)
def test_public_wrapper_uses_kernel(kernels, device):
    q = make((30, 8), torch.float64, device, seed=1)
    t = make((200, 8), torch.float64, device, seed=2)
    v, i = ops.nearest_embedding(q, t, 3)
    choice = ops.last_backend("nearest_embedding")
    assert choice.backend == "kernel" and choice.device == torch.device(device).type
    vr, ir = reference.nearest_embedding(q, t, 3)
    assert torch.equal(i, ir)
    torch.testing.assert_close(v, vr)


def test_forced_reference_backend(kernels):
    q = make((30, 8), torch.float64, "cpu", seed=1)
    t = make((200, 8), torch.float64, "cpu", seed=2)
    ops.set_backend("reference")
    v, i = ops.nearest_embedding(q, t, 3, "inner")
    choice = ops.last_backend("nearest_embedding")
    assert choice.backend == "reference" and "forced" in choice.reason
    ops.set_backend("auto")
    v2, i2 = ops.nearest_embedding(q, t, 3, "inner")
    assert ops.last_backend("nearest_embedding").backend == "kernel"
    assert torch.equal(i, i2)
    torch.testing.assert_close(v, v2)


def test_env_reference_backend():
    code = """
        import json, torch
        import fastdistill.ops as ops
        q, t = torch.randn(5, 3, dtype=torch.float64), torch.randn(40, 3, dtype=torch.float64)
        v, i = ops.nearest_embedding(q, t, 2)
        d = torch.cdist(q, t).topk(2, largest=False)
        assert torch.equal(i, d.indices) and torch.allclose(v, d.values)
        print(json.dumps(ops.last_backend("nearest_embedding")._asdict()))
    """
    env = {k: v for k, v in os.environ.items() if k != "FASTDISTILL_DISABLE_EXTENSION"}
    env["FASTDISTILL_BACKEND"] = "reference"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"backend": "reference"' in proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("device", DEVICES)
def test_not_differentiable(kernels, device):
    q = make((4, 3), torch.float64, device, seed=1)
    t = make((9, 3), torch.float64, device, seed=2)
    for backend in ("kernels", "reference"):
        ops.set_backend(backend)
        v, i = ops.nearest_embedding(q.requires_grad_(), t, 2)
        assert not i.requires_grad
        with pytest.raises(RuntimeError, match="nearest_embedding is not differentiable"):
            v.sum().backward()
        q.requires_grad_(False)
        with torch.no_grad():
            v, i = ops.nearest_embedding(q, t, 2)
        assert not v.requires_grad


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(kernels, device):
    for dtype in DTYPES:
        q = make((6, 5), dtype, device, seed=1)
        t = make((11, 5), dtype, device, seed=2)
        op = kernels.nearest_embedding.default
        for metric in METRICS:
            torch.library.opcheck(op, (q, t, 3, metric, None))
        norms = ops.embedding_table_norms(t, "euclidean")
        torch.library.opcheck(op, (q.t().contiguous().t(), t, 1, "euclidean", norms))
        torch.library.opcheck(op, (q[:, ::2], t[:, ::2], 11, "cosine", None))


def test_meta(kernels):
    q, t = torch.empty(7, 5, device="meta"), torch.empty(20, 5, device="meta")
    v, i = ops.nearest_embedding(q, t, 4, "cosine")
    assert v.shape == (7, 4) and i.shape == (7, 4) and i.dtype == torch.int64
    assert v.device.type == "meta"


# ------------------------------------------------------------------------------ bad inputs
def _bad_cases(device):
    f32 = {"dtype": torch.float32, "device": device}
    q, t = torch.zeros(4, 3, **f32), torch.zeros(7, 3, **f32)
    n = torch.zeros(7, **f32)
    return [
        ((q, t, 0, "euclidean", None), ValueError, r"k = 0 is out of range: need 1 <= k <= V = 7"),
        ((q, t, 8, "cosine", None), ValueError, r"k = 8 is out of range: need 1 <= k <= V = 7"),
        ((q, t[:0], 1, "inner", None), ValueError, r"k = 1 is out of range.*V = 0"),
        ((q[0], t, 1, "euclidean", None), ValueError, r"`queries` must be a 2-D tensor"),
        ((q, t[0], 1, "euclidean", None), ValueError, r"`table` must be a 2-D tensor"),
        ((q, t[:, :2], 1, "euclidean", None), ValueError, r"`table` must have as many columns"),
        ((q, t.double(), 1, "euclidean", None), TypeError, r"`table` must have the same dtype"),
        ((q.int(), t.int(), 1, "euclidean", None), TypeError, r"`queries` must have dtype"),
        ((q, t, 1, "manhattan", None), ValueError, r"`metric` must be 'euclidean', 'cosine'"),
        ((q, t, 1, "euclidean", n[:3]), ValueError, r"`table_norms` must have shape \[V\]"),
        ((q, t, 1, "euclidean", n.double()), TypeError, r"`table_norms` must have the same"),
        ((q, t, 1, "inner", n), ValueError, r"`table_norms` must be None for metric 'inner'"),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_kernel_and_reference_alike(kernels, device):
    for args, exc, pattern in _bad_cases(device):
        with pytest.raises(exc, match=pattern):
            kernels.nearest_embedding(*args)
        with pytest.raises(exc, match=pattern):
            reference.nearest_embedding(*args)
        with pytest.raises(exc, match=pattern):
            ops.nearest_embedding(*args)


@pytest.mark.cuda
def test_device_mismatch_cuda(kernels):
    q, t = torch.zeros(2, 3, device="cuda"), torch.zeros(5, 3, device="cuda")
    with pytest.raises(ValueError, match=r"`table` must be on the same device"):
        kernels.nearest_embedding(q, t.cpu(), 1, "euclidean", None)
    with pytest.raises(ValueError, match=r"`table_norms` must be on the same device"):
        kernels.nearest_embedding(q, t, 1, "euclidean", torch.zeros(5))
