"""Text shapes (docs/algorithm.md §10): one outer iteration, ``unroll`` vs ``adjoint``, time and peak tensor
memory, plus nearest-word decoding of a whole distilled IMDB-shape set.

* IMDB shape: TextConvNet, length 400, 100-d embeddings, binary (one logit), 20 distilled
  sentences as S=10 steps x 2, E=3 (issue 4's run) and the original code's T=5 figure
  (20 sentences in one step... here S=1 x 20, E=5). Real batch 256 on the CPU (1024 with
  ``FASTDISTILL_BENCH_LARGE=1`` or on a GPU).
* TREC shape: 2-layer Bi-LSTM, length 30, 50-d, 6 classes, 120 distilled sentences (1 step,
  E=2), real batch 1024.
* Decoding: 20 x 400 distilled vectors against a 30,000 x 100 vocabulary table.

Original code, 2-core CPU (docs/algorithm.md §10): IMDB TextConvNet T=5: 4.6 s, 1.6 GB; TREC-6 Bi-LSTM
(120 sentences, T=2): 1.05 s, 1.7 GB. The peak memory of each run is in
``extra_info["peak_mb"]``.
"""

from __future__ import annotations

import os

import pytest
import torch

from fastdistill.engine import FlatModel, hypergradient, sample_weights
from fastdistill.models import BiLSTM, TextConvNet
from fastdistill.utils.memory import peak_memory

LARGE = os.environ.get("FASTDISTILL_BENCH_LARGE") == "1"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

# name -> (model, L, D, outputs, S, N per step, E, real batch on CPU)
CASES = {
    "imdb-textconvnet-20-S10E3": ("textconvnet", 400, 100, 1, 10, 2, 3, 256),
    "imdb-textconvnet-20-S1E5": ("textconvnet", 400, 100, 1, 1, 20, 5, 256),
    "trec6-bilstm-120-S1E2": ("bilstm", 30, 50, 6, 1, 120, 2, 1024),
}


def _problem(case: str, device: str):
    name, L, D, K, S, N, E, batch = CASES[case]
    if LARGE or device == "cuda":
        batch = 1024
    gen = torch.Generator().manual_seed(0)
    module = TextConvNet(D, K, L) if name == "textconvnet" else BiLSTM(D, K, L)
    model = FlatModel(module.to(device))
    w0 = sample_weights(model, 1, generator=gen).to(device)
    # GloVe-like scale: entries of real embeddings are ~N(0, 0.4)
    data = (0.4 * torch.randn(S, N, L, D, generator=gen)).to(device)
    real_x = (0.4 * torch.randn(batch, L, D, generator=gen)).to(device)
    if K == 1:
        labels = (torch.arange(S * N) % 2).float().reshape(S, N).to(device)
        real_y = torch.randint(0, 2, (batch,), generator=gen).to(device)
        kind = "binary"
    else:
        labels = torch.eye(K).repeat(S, -(-N // K), 1)[:, :N].to(device)
        real_y = torch.randint(0, K, (batch,), generator=gen).to(device)
        kind = "soft"
    raw = torch.full((S * E,), -3.9).to(device)  # softplus = 0.02
    return (model, w0, data, labels, raw, real_x, real_y), kind


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("engine", ["unroll", "adjoint", "adjoint-chunk128"])
@pytest.mark.parametrize("case", list(CASES))
def test_text_outer_iteration(benchmark, case, engine, device):
    """``adjoint-chunk128``: the real-batch outer pass in chunks of 128 (``outer_chunk``)."""
    benchmark.group = f"text outer iteration {case} {device}"
    args, kind = _problem(case, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    name, _, chunk = engine.partition("-chunk")
    opts = {"outer_chunk": int(chunk)} if chunk else {}

    def run():
        out = hypergradient(*args, label_kind=kind, engine=name, rng_seed=0, **opts)
        sync()
        return out

    _, peak = peak_memory(run, device)
    benchmark.extra_info["peak_mb"] = round(peak / 2**20, 1)
    benchmark.extra_info["real_batch"] = args[5].shape[0]
    benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=0)


@pytest.mark.parametrize("device", DEVICES)
def test_decode_imdb_shape(benchmark, device):
    """Nearest-word decoding of 20 distilled sentences of 400 vectors (the original code's
    Python sort per word took ~17 minutes per checkpoint)."""
    from fastdistill.decode import nearest_words

    gen = torch.Generator().manual_seed(0)
    table = torch.randn(30_000, 100, generator=gen).to(device)
    words = [f"w{i}" for i in range(table.shape[0])]
    x = torch.randn(20, 400, 100, generator=gen).to(device)
    benchmark.group = f"decode 20x400 vs 30000x100 {device}"
    out = benchmark.pedantic(lambda: nearest_words(x, table, words), rounds=3, iterations=1)
    assert len(out) == 20 and len(out[0]) == 400
