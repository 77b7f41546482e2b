"""Baselines (docs/algorithm.md §5) on real digits and a tiny generated text task: what each baseline builds,
k-NN against brute force, k-means against its definition and scikit-learn, the top-20% rule,
the binary label sense, input errors, and the end-to-end entry point."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdistill import baselines as B
from fastdistill.baselines import (
    BASELINES,
    average_real,
    choose_lr,
    class_layout,
    kmeans,
    kmeans_centroids,
    knn_accuracy,
    knn_predict,
    optimized_real,
    random_real,
    run_baselines,
    train_accuracy,
)
from fastdistill.data import WordVectors, from_texts, load_image_dataset
from fastdistill.distilled import DistilledSet
from fastdistill.engine import FlatModel, sample_weights
from fastdistill.evaluate import evaluate_distilled
from fastdistill.models import MLP


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits")


def mlp() -> FlatModel:
    return FlatModel(MLP(1, 10, 8, hidden=(32,)))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# tiny text task: the first word says the class (positive words vs negative words)

POS, NEG = ["good", "great", "fine"], ["bad", "awful", "poor"]
FILLER = ["movie", "film", "the"]


@pytest.fixture(scope="module")
def text():
    words = POS + NEG + FILLER
    g = gen(3)
    table = 0.1 * torch.randn(len(words), 4, generator=g)
    table[:3, 0] += 1.0  # positive words point one way, negative words the other
    table[3:6, 0] -= 1.0
    vectors = WordVectors(words, table, name="tiny-4d")

    def texts(n: int, seed: int) -> tuple[list[str], list[str]]:
        r = gen(seed)
        out, labels = [], []
        for i in range(n):
            pos = i % 2 == 1
            word = (POS if pos else NEG)[int(torch.randint(3, (1,), generator=r))]
            filler = FILLER[int(torch.randint(3, (1,), generator=r))]
            out.append(f"{word} {filler}")
            labels.append("pos" if pos else "neg")
        return out, labels

    tr, tr_y = texts(40, 1)
    te, te_y = texts(30, 2)
    return from_texts(
        tr, tr_y, te, te_y, class_names=["neg", "pos"], seq_len=3, vectors=vectors, name="tiny"
    )


def text_model() -> FlatModel:
    return FlatModel(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4, 1)))


# ---------------------------------------------------------------------------------------------
# layout and labels


@pytest.mark.parametrize(
    "k, steps, per_class, cps", [(10, 3, 2, None), (10, 2, 1, 5), (3, 4, 2, 2)]
)
def test_layout_is_the_distilled_set_order(k, steps, per_class, cps):
    d = DistilledSet.initialize(
        num_classes=k,
        sample_shape=(1,),
        steps=steps,
        images_per_class=per_class,
        classes_per_step=cps,
    )
    assert torch.equal(class_layout(k, steps, per_class, cps), d.classes)


def test_average_real_is_the_class_means(digits):
    d = average_real(digits, per_class=2, steps=3, epochs=2, lr=0.05)
    assert d.data.shape == (3, 20, 1, 8, 8) and d.total_steps == 6 and not d.learn_labels
    for c in range(10):
        mean = digits.train_x[digits.train_y == c].double().mean(0).float()
        at = d.classes == c
        assert at.sum() == 6
        torch.testing.assert_close(d.data[at], mean.expand(6, 1, 8, 8), rtol=0, atol=1e-6)
    assert torch.equal(d.labels, F.one_hot(d.classes, 10).float())
    torch.testing.assert_close(d.lrs, torch.full((6,), 0.05))


def test_random_real_takes_real_examples_in_order(digits):
    d = random_real(digits, per_class=3, steps=2, epochs=2, generator=gen(1))
    idx = torch.tensor(d.meta["train_indices"])
    assert idx.numel() == 60 and idx.unique().numel() == 60  # no example twice
    assert torch.equal(d.data.reshape(60, 1, 8, 8), digits.train_x[idx])
    assert torch.equal(digits.train_y[idx].reshape(2, 30), d.classes)
    assert torch.equal(d.labels.argmax(-1), d.classes) and torch.equal(
        d.labels.sum(-1), 1 + 0 * d.classes.float()
    )
    # the class-interleaved order of distilled sets: c0, c1, ..., c9, c0, ...
    assert d.classes[0].tolist() == list(range(10)) * 3
    same = random_real(digits, per_class=3, steps=2, epochs=2, generator=gen(1))
    other = random_real(digits, per_class=3, steps=2, epochs=2, generator=gen(2))
    assert same.meta["train_indices"] == d.meta["train_indices"]
    assert other.meta["train_indices"] != d.meta["train_indices"]


def test_binary_text_labels_have_the_right_sense(text):
    assert text.binary
    d = random_real(text, per_class=2, steps=2, epochs=3, lr=1.0, generator=gen(0))
    idx = torch.tensor(d.meta["train_indices"])
    assert d.label_kind == "binary" and d.labels.shape == (2, 4)
    assert torch.equal(d.labels, d.classes.float())  # class 1 ("pos") -> 1.0
    assert torch.equal(text.train_y[idx].reshape(2, 4), d.classes)
    assert torch.equal(d.data.reshape(8, 3, 4), text.encode(text.train_x[idx]))
    # trained with these labels a linear net separates the task; inverted labels would not
    acc = evaluate_distilled(
        d,
        text_model(),
        text.test_x,
        text.test_y,
        init="random",
        n_nets=5,
        generator=gen(0),
        transform=text.model_inputs,
    )
    assert acc.mean > 0.9
    flipped = DistilledSet(d.data, 1 - d.labels, d.raw_lrs, d.classes, d.epochs, "binary", False)
    bad = evaluate_distilled(
        flipped,
        text_model(),
        text.test_x,
        text.test_y,
        init="random",
        n_nets=5,
        generator=gen(0),
        transform=text.model_inputs,
    )
    assert bad.mean < 0.1


def test_text_baselines_work_on_embedded_sentences(text):
    avg = average_real(text, per_class=1, steps=1)
    emb = text.encode(text.train_x)
    for c in range(2):
        torch.testing.assert_close(avg.data[0, c], emb[text.train_y == c].mean(0))
    km = kmeans_centroids(text, per_class=2, steps=1, generator=gen(0))
    assert km.data.shape == (1, 4, 3, 4)
    assert knn_accuracy(text, km) > 0.9 and knn_accuracy(text, avg) > 0.9


# ---------------------------------------------------------------------------------------------
# k-NN


def brute_knn(ref: Tensor, ref_y: Tensor, q: Tensor, k: int) -> Tensor:
    """cdist + stable sort, majority vote, ties to the class met first among the neighbours."""
    d = torch.cdist(q.double(), ref.double())
    order = torch.sort(d, dim=1, stable=True).indices[:, :k]
    preds = []
    for row in ref_y[order].tolist():
        counts = {c: row.count(c) for c in row}
        top = max(counts.values())
        preds.append(next(c for c in row if counts[c] == top))
    return torch.tensor(preds)


def test_knn_on_the_full_training_set_is_brute_force(digits):
    ref = digits.train_x.flatten(1).double()
    q = digits.test_x.flatten(1).double()
    d = torch.cdist(q, ref)
    top2 = d.topk(2, largest=False).values
    clear = (top2[:, 1] - top2[:, 0]) > 1e-9  # no near-tie that rounding could flip
    assert clear.float().mean() > 0.95
    one = knn_predict(ref, digits.train_y, q, k=1)
    assert torch.equal(one[clear], digits.train_y[d.argmin(1)][clear])
    for k in (1, 3, 5):
        pred = knn_predict(ref, digits.train_y, q, k=k)
        assert torch.equal(pred, brute_knn(ref, digits.train_y, q, k))
    acc = knn_accuracy(digits, (digits.train_x, digits.train_y), batch_size=100)
    expected = float((digits.train_y[d.argmin(1)] == digits.test_y).double().mean())
    assert abs(acc - expected) <= 1 / 450 and acc > 0.95


def test_knn_votes_and_breaks_ties_by_the_nearest():
    ref = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    y = torch.tensor([1, 0, 0, 1])
    q = torch.tensor([[0.1], [1.4], [2.9]])
    assert knn_predict(ref, y, q, k=3).tolist() == [0, 0, 0]  # two 0s outvote one 1
    assert knn_predict(ref, y, q, k=2).tolist() == [1, 0, 1]  # 1-1 tie: nearest class wins
    with pytest.raises(ValueError, match="k must be in"):
        knn_predict(ref, y, q, k=5)


# ---------------------------------------------------------------------------------------------
# k-means


def assert_lloyd_fixed_point(x: Tensor, centers: Tensor) -> None:
    """Every centroid is the mean of the rows nearest to it: inside the rows' convex hull."""
    flat = x.flatten(1).double()
    assign = torch.cdist(flat, centers.double()).argmin(1)
    for j in range(centers.shape[0]):
        members = flat[assign == j]
        assert members.shape[0] > 0
        torch.testing.assert_close(centers[j].double(), members.mean(0), rtol=0, atol=1e-5)


def test_kmeans_centroids_are_class_cluster_means(digits):
    d = kmeans_centroids(digits, per_class=2, steps=2, generator=gen(0))
    assert d.data.shape == (2, 20, 1, 8, 8)
    assert torch.equal(d.labels.argmax(-1), d.classes)
    for c in (0, 3, 8):
        cents = d.data[d.classes == c]
        assert cents.shape[0] == 4
        assert_lloyd_fixed_point(digits.train_x[digits.train_y == c], cents.flatten(1))
    again = kmeans_centroids(digits, per_class=2, steps=2, generator=gen(0))
    assert torch.equal(again.data, d.data)


def test_kmeans_matches_sklearn_quality(digits):
    from sklearn.cluster import KMeans

    x = digits.train_x[digits.train_y == 5].flatten(1)
    for k in (1, 4):
        centers, inertia = kmeans(x, k, n_init=5, generator=gen(0))
        assert_lloyd_fixed_point(x, centers)
        sk = KMeans(n_clusters=k, init="k-means++", n_init=5, random_state=0).fit(x.numpy())
        assert inertia <= 1.02 * sk.inertia_
        if k == 1:
            torch.testing.assert_close(centers[0], x.double().mean(0).float(), rtol=0, atol=1e-5)


def test_kmeans_streamed_in_chunks_equals_in_memory(digits, monkeypatch):
    whole = kmeans_centroids(digits, per_class=3, steps=1, generator=gen(4))
    monkeypatch.setattr(B._common, "_CHUNK_ELEMENTS", 64 * 7)  # 7 rows per chunk
    monkeypatch.setattr(B._common, "_CACHE_BYTES", 0)  # never keep a class in memory
    streamed = kmeans_centroids(digits, per_class=3, steps=1, generator=gen(4))
    torch.testing.assert_close(streamed.data, whole.data, rtol=0, atol=1e-5)
    avg = average_real(digits)
    monkeypatch.undo()
    torch.testing.assert_close(avg.data, average_real(digits).data, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# optimized real, step sizes


def test_optimized_real_keeps_the_top_fifth_by_training_score(digits):
    model = mlp()
    w = sample_weights(model, 3, generator=gen(5))
    kept = optimized_real(
        digits,
        model,
        per_class=1,
        steps=2,
        epochs=2,
        candidates=10,
        score_weights=w,
        score_samples=10**6,
        generator=gen(6),
    )
    assert len(kept) == 2
    scores = kept[0].meta["candidate_scores"]
    assert len(scores) == 10 and len(set(scores)) > 2  # the draws really differ
    top = sorted(scores, reverse=True)[:2]
    assert [d.meta["train_score"] for d in kept] == top
    assert [scores[d.meta["candidate"]] for d in kept] == top
    everything = torch.arange(digits.train_x.shape[0])
    for d in kept:  # the score is the mean training accuracy of the scoring nets
        again = float(train_accuracy(d, model, digits, w, everything).mean())
        assert again == pytest.approx(d.meta["train_score"], abs=1e-12)


def test_choose_lr_prefers_learning_and_scores_blowups_zero(digits):
    model = mlp()
    w = sample_weights(model, 2, generator=gen(0))
    d = random_real(digits, per_class=1, steps=2, epochs=2, generator=gen(0))
    idx = torch.arange(500)
    assert choose_lr(d, model, digits, w, idx, grid=(1e-6, 0.3)) == 0.3
    blown = train_accuracy(B.with_lr(d, 1e12), model, digits, w, idx)
    assert torch.equal(blown, torch.zeros(2, dtype=blown.dtype))


def test_learned_step_sizes_can_be_reused(digits):
    lrs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    res = run_baselines(
        digits,
        mlp(),
        per_class=1,
        steps=2,
        epochs=2,
        n_nets=2,
        draws=1,
        lr=lrs,
        names=("average_real",),
    )
    assert res["average_real"].lr == pytest.approx(lrs.tolist())
    d = B.with_lr(average_real(digits, steps=2, epochs=2), lrs)
    torch.testing.assert_close(d.lrs, lrs)
    with pytest.raises(ValueError, match="T = 4"):
        B.with_lr(d, torch.ones(3))


# ---------------------------------------------------------------------------------------------
# errors


@dataclass
class GapData:
    """A minimal DistillData whose class 2 has no training examples."""

    name: str = "gap"
    num_classes: int = 3
    binary: bool = False

    def __post_init__(self):
        self.train_x = torch.randn(6, 2)
        self.train_y = torch.tensor([0, 0, 1, 1, 0, 1])
        self.test_x, self.test_y = torch.randn(4, 2), torch.tensor([0, 1, 2, 0])
        self.class_names = ["a", "b", "c"]

    @property
    def sample_shape(self):
        return (2,)

    def model_inputs(self, x):
        return x


def test_clear_errors(digits):
    with pytest.raises(
        ValueError, match=r"class 0 \('0'\) has 133 training examples but needs 200"
    ):
        random_real(digits, per_class=100, steps=2)
    with pytest.raises(ValueError, match=r"class 2 \('c'\) has no training examples"):
        random_real(GapData())
    with pytest.raises(ValueError, match=r"class 2 \('c'\) has no training examples"):
        average_real(GapData())
    with pytest.raises(ValueError, match="unknown baseline.*'knn'"):
        run_baselines(digits, mlp(), names=("random_real", "knn"))
    with pytest.raises(ValueError, match="init must be"):
        run_baselines(digits, mlp(), init="pretrained")
    with pytest.raises(ValueError, match="k-means needs 1 <= k"):
        kmeans(torch.randn(3, 2), 4)
    with pytest.raises(ValueError, match="positive"):
        random_real(digits, lr=0.0)


# ---------------------------------------------------------------------------------------------
# end to end


def test_run_baselines_on_digits_beats_chance_and_is_deterministic(digits):
    kw = {"per_class": 1, "steps": 2, "epochs": 2, "n_nets": 6, "draws": 3, "candidates": 10}
    kw.update(score_nets=3, score_samples=512, seed=0)
    res = run_baselines(digits, mlp(), **kw)
    assert list(res) == list(BASELINES)
    for name in ("random_real", "optimized_real", "kmeans", "average_real"):
        assert res[name].mean > 0.35, (name, str(res[name]))  # chance is 0.10
        assert res[name].lr in B.LR_GRID
    assert res["random_real"].n_nets == 6 and res["random_real"].draws == 3
    assert res["optimized_real"].draws == 2  # 20% of 10 candidates
    assert res["knn_random_real"].mean > 0.6 and res["knn_random_real"].n_nets == 3
    assert res["knn_kmeans"].mean > 0.85
    again = run_baselines(digits, mlp(), **kw)
    for name in BASELINES:
        assert torch.equal(again[name].accuracies, res[name].accuracies)
    fixed = run_baselines(digits, mlp(), init="fixed", names=("average_real", "random_real"), **kw)
    assert fixed["average_real"].n_nets == 1 and fixed["random_real"].n_nets == 3
    assert fixed["average_real"].mean > 0.35


def test_run_baselines_on_text_with_dropout_is_deterministic(text):
    from fastdistill.models import TextConvNet

    def model() -> FlatModel:  # dropout 0.5 stays on in the inner steps
        return FlatModel(TextConvNet(4, 1, 3, filters=4, widths=(2, 3)))

    kw = {"per_class": 2, "steps": 2, "epochs": 2, "n_nets": 4, "draws": 2, "candidates": 5}
    kw.update(score_nets=2, seed=7)
    res = run_baselines(text, model(), **kw)
    again = run_baselines(text, model(), **kw)
    assert list(res) == list(BASELINES)
    for name in BASELINES:
        assert torch.equal(again[name].accuracies, res[name].accuracies), name
    assert res["knn_random_real"].mean > 0.9 and res["average_real"].mean > 0.7
