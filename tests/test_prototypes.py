"""Soft-label k-NN prototypes: two prototypes separate Iris's three classes (paper Figure 4)."""

from __future__ import annotations

import pytest
import torch

from fastdistill.prototypes import Prototypes, fit_prototypes, knn_scores, load_iris_2d


@pytest.fixture(scope="module")
def iris():
    torch.set_num_threads(1)
    return load_iris_2d("petal")


@pytest.fixture(scope="module")
def two(iris) -> Prototypes:
    x, y, _ = iris
    return fit_prototypes(x, y, 2, seed=0)


def test_two_prototypes_separate_three_classes(iris, two):
    x, y, names = iris
    assert names == ["setosa", "versicolor", "virginica"]
    assert two.positions.shape == (2, 2) and two.labels.shape == (2, 3)
    assert two.accuracy(x, y) > 0.85
    assert sorted(two.predict(x).unique().tolist()) == [0, 1, 2]
    assert two.losses[-1] < 0.5 * two.losses[0]


def test_soft_labels_are_learned_mixtures(two):
    dist = two.label_distributions
    assert torch.allclose(dist.sum(1), torch.ones(2, dtype=dist.dtype))
    # each label row mixes at least two classes (one-hot rows could give only two regions)
    assert ((dist > 0.1).sum(1) >= 2).all()
    assert (dist.max(1).values < 0.9).all()


def test_hard_labels_cannot_cover_three_classes(iris):
    x, y, _ = iris
    hard = fit_prototypes(x, y, 2, seed=0, learn_labels=False)
    assert hard.predict(x).unique().numel() <= 2
    assert hard.accuracy(x, y) < 0.7


def test_raw_labels_on_pca_features():
    x, y, _ = load_iris_2d("pca")
    model = fit_prototypes(x, y, 2, seed=0, label_param="raw")
    assert model.accuracy(x, y) > 0.85
    assert model.predict(x).unique().numel() == 3


def test_deterministic_with_a_seed(iris):
    x, y, _ = iris
    kw = {"init": "random_real", "steps": 50}
    a = fit_prototypes(x, y, 3, seed=3, **kw)
    b = fit_prototypes(x, y, 3, seed=3, **kw)
    c = fit_prototypes(x, y, 3, seed=4, **kw)
    assert torch.equal(a.positions, b.positions) and torch.equal(a.labels, b.labels)
    assert a.losses == b.losses
    assert not torch.equal(a.positions, c.positions)


def test_frozen_parts_stay_put(iris):
    x, y, _ = iris
    pos = torch.tensor([[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    soft = fit_prototypes(x, y, 3, positions=pos, learn_positions=False, steps=100)
    assert torch.equal(soft.positions, pos)
    assert not torch.allclose(soft.labels, 4 * torch.eye(3, dtype=torch.float64))
    gen = fit_prototypes(x, y, 3, positions=pos, learn_labels=False, steps=100)
    assert torch.equal(gen.labels, 4 * torch.eye(3, dtype=torch.float64))
    assert not torch.equal(gen.positions, pos)


def test_knn_scores_rule():
    pos = torch.tensor([[0.0, 0.0], [4.0, 0.0]], dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([[1.0, 0.0, 0.6], [0.0, 1.0, 0.6]], dtype=torch.float64)
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.5, 0.0]], dtype=torch.float64)
    s = knn_scores(x, pos, rows)
    assert s.argmax(1).tolist() == [0, 0, 2, 1]  # the middle class wins between the two
    assert torch.allclose(s[2], torch.tensor([0.5, 0.5, 0.6], dtype=torch.float64))
    nearest = knn_scores(x, pos, rows, k=1)
    assert torch.allclose(nearest, rows[[0, 0, 0, 1]])
    s.sum().backward()  # a point sitting on a prototype must not give NaN gradients
    assert torch.isfinite(pos.grad).all()


def test_bad_inputs(iris):
    x, y, _ = iris
    with pytest.raises(ValueError, match="n_prototypes"):
        fit_prototypes(x, y, 0)
    with pytest.raises(ValueError, match="k must be"):
        fit_prototypes(x, y, 2, k=3)
    with pytest.raises(ValueError, match=r"x must be \[B, F\]"):
        fit_prototypes(x[:, 0], y, 2)
    with pytest.raises(ValueError, match="unknown init"):
        fit_prototypes(x, y, 2, init="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positions must be"):
        fit_prototypes(x, y, 2, positions=torch.zeros(3, 2))


def test_iris_figures(tmp_path):
    from fastdistill.figures import iris_prototype_figures

    paths = iris_prototype_figures(tmp_path, steps=60)
    names = {p.name for p in paths}
    assert names == {
        f"{s}.{e}" for s in ("iris_prototypes_2", "iris_prototype_methods") for e in ("png", "pdf")
    }
    assert all(p.stat().st_size > 1000 for p in paths)
