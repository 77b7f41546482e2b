"""Evaluation protocol: batched training of many nets, statistics, full-data accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from fastdistill.distilled import DistilledSet
from fastdistill.engine import FlatModel, sample_weights
from fastdistill.evaluate import (
    Accuracy,
    accuracy,
    distillation_ratio,
    evaluate_distilled,
    train_on_distilled,
)
from fastdistill.full_data import train_full_data
from fastdistill.models import MLP


def test_accuracy_statistics_are_unbiased():
    acc = Accuracy(torch.tensor([0.5, 0.7, 0.9], dtype=torch.float64))
    assert math.isclose(acc.mean, 0.7) and math.isclose(acc.std, 0.2)
    assert acc.to_dict() == {"mean": acc.mean, "std": acc.std, "n_nets": 3}
    assert Accuracy(torch.tensor([0.4])).std == 0.0


def test_distillation_ratio():
    assert math.isclose(distillation_ratio(0.6, 0.8), 75.0)
    with pytest.raises(ValueError):
        distillation_ratio(0.5, 0.0)


def test_batched_training_equals_one_net_at_a_time():
    torch.manual_seed(0)
    model = FlatModel(MLP(1, 3, 4, hidden=(8,)).double())
    d = DistilledSet.initialize(
        num_classes=3,
        sample_shape=(1, 4, 4),
        steps=2,
        epochs=2,
        dtype=torch.float64,
        distill_lr=0.1,
    )
    w0 = sample_weights(model, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    batched = train_on_distilled(model, w0, d)
    for i in range(4):
        assert torch.allclose(batched[i], train_on_distilled(model, w0[i : i + 1], d)[0])
    x, y = torch.randn(50, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (50,))
    accs = accuracy(model, batched, x, y, batch_size=7)
    manual = (model.forward(batched, x, train=False).argmax(-1) == y).double().mean(-1)
    assert torch.equal(accs, manual)


def test_random_init_evaluation_counts_nets_and_fixed_needs_weights():
    model = FlatModel(MLP(1, 3, 4, hidden=(8,)))
    d = DistilledSet.initialize(num_classes=3, sample_shape=(1, 4, 4))
    x, y = torch.randn(20, 1, 4, 4), torch.randint(0, 3, (20,))
    acc = evaluate_distilled(
        d, model, x, y, init="random", n_nets=7, chunk=3, generator=torch.Generator().manual_seed(0)
    )
    assert acc.n_nets == 7 and acc.accuracies.shape == (7,)
    with pytest.raises(ValueError, match="needs init weights"):
        evaluate_distilled(d, model, x, y, init="fixed")


def test_full_data_training_learns_digits():
    from fastdistill.data import load_image_dataset

    data = load_image_dataset("digits")
    full = train_full_data(MLP(1, 10, 8, hidden=(64,)), data, epochs=20)
    assert full.test_accuracy > 0.9 and full.warnings(0.5) == []
