"""nearest_embedding (nearest-word decoding of distilled text embeddings): the fused tiled kernel
vs the pure-PyTorch reference vs what users would write with ``torch.cdist`` + ``topk``. Each
(case, device) is one benchmark group, so the implementations appear side by side:

* ``kernel``: ``torch.ops.fastdistill.nearest_embedding`` (score tiles + running top-k),
* ``reference``: ``fastdistill.ops.reference.nearest_embedding`` (query chunks, mm + topk),
* ``cdist_topk``: ``torch.cdist(q, table).topk(k, largest=False)`` (the full [N, V] matrix;
  chunked over queries in the large case, ``_CDIST_CHUNK_BYTES`` of distances per chunk).

Cases (euclidean, k = 1, float32):

* ``sentences``: 20 sentences x 400 tokens = 8,000 queries against a 30,000 x 100 table.
* ``large`` (marked slow): 100,000 queries against a 400,000 x 300 table, where the full
  distance matrix would take 160 GB. The default is 2,000 queries against the full-size table;
  ``FASTDISTILL_BENCH_FULL=1`` runs the full size, ``FASTDISTILL_BENCH_LARGE=N,V,D`` any size.
  The reference (chunks of ~10 queries: the table is read N/10 times) runs only up to 10,000
  queries.

``extra_info["peak_extra_mib"]``: the call's peak memory above what was allocated before it
(CUDA: the caching allocator's peak; CPU: the process's resident memory, sampled every 2 ms).
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from fastdistill import ops
from fastdistill.ops import reference

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
IMPLS = ["kernel", "reference", "cdist_topk"]
SENTENCES = (8_000, 30_000, 100)
LARGE_FULL = (100_000, 400_000, 300)
LARGE_DEFAULT = (2_000, 400_000, 300)
_CDIST_CHUNK_BYTES = 1 << 30
_REFERENCE_MAX_N = 10_000
K = 1


def _large_size() -> tuple[int, int, int]:
    spec = os.environ.get("FASTDISTILL_BENCH_LARGE", "").strip()
    if spec:
        n, v, d = (int(x) for x in spec.split(","))
        return n, v, d
    if os.environ.get("FASTDISTILL_BENCH_FULL", "").strip().lower() in {"1", "true", "yes"}:
        return LARGE_FULL
    return LARGE_DEFAULT


def _kernels():
    if not ops.extension_loaded():
        pytest.skip(f"extension not loaded: {ops.backend_info()['reason']}")
    return torch.ops.fastdistill


def _inputs(n: int, v: int, d: int, device: str):
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(n, d, generator=gen, device=device)
    t = torch.randn(v, d, generator=gen, device=device)
    return q, t


def _sync(device: str):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_extra_mib(fn, device: str) -> float:
    """Peak memory of one call of ``fn`` above the memory in use before it, in MiB."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = peak = _rss_bytes()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return (max(peak, _rss_bytes()) - base) / 2**20


def _impl(impl: str, q: torch.Tensor, t: torch.Tensor, chunked: bool):
    if impl == "kernel":
        op = _kernels().nearest_embedding.default
        return lambda: op(q, t, K, "euclidean", None)
    if impl == "reference":
        return lambda: reference.nearest_embedding(q, t, K, "euclidean")
    if not chunked:
        return lambda: torch.cdist(q, t).topk(K, dim=1, largest=False)
    rows = max(1, _CDIST_CHUNK_BYTES // (t.shape[0] * q.element_size()))

    def cdist_topk_chunked():
        vals, idx = [], []
        for i in range(0, q.shape[0], rows):
            v, ix = torch.cdist(q[i : i + rows], t).topk(K, dim=1, largest=False)
            vals.append(v)
            idx.append(ix)
        return torch.cat(vals), torch.cat(idx)

    return cdist_topk_chunked


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
def test_sentences(benchmark, impl, device):
    n, v, d = SENTENCES
    benchmark.group = f"nearest_embedding {device} sentences: {n} queries vs {v}x{d}, k={K}"
    q, t = _inputs(n, v, d, device)
    fn = _impl(impl, q, t, chunked=False)
    sync = _sync(device)
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.extra_info["peak_extra_mib"] = round(_peak_extra_mib(fn, device), 1)  # + warm-up

    def call():
        fn()
        sync()

    benchmark.pedantic(call, rounds=3, iterations=1, warmup_rounds=0)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
def test_large(benchmark, impl, device):
    n, v, d = _large_size()
    if impl == "reference" and n > _REFERENCE_MAX_N:
        pytest.skip(
            f"the reference reads the table N/10 times: skipped above {_REFERENCE_MAX_N} queries"
        )
    benchmark.group = f"nearest_embedding {device} large: {n} queries vs {v}x{d}, k={K}"
    q, t = _inputs(n, v, d, device)
    fn = _impl(impl, q, t, chunked=True)
    sync = _sync(device)
    _impl(impl, q[:64], t[:4096], chunked=True)()  # warm-up (BLAS handles, allocator)
    sync()
    peak = {}

    def call():
        peak["mib"] = _peak_extra_mib(fn, device)
        sync()

    benchmark.pedantic(call, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.extra_info["peak_extra_mib"] = round(peak["mib"], 1)
    benchmark.extra_info["size"] = f"{n}x{v}x{d}"
