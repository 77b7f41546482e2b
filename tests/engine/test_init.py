"""Initial-weight distributions drawn for many nets at once."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fastdistill.engine import FlatModel, sample_weights
from fastdistill.models import ConvNet, LeNet


def _param(model: FlatModel, w: torch.Tensor, name: str) -> torch.Tensor:
    return model.unflatten(w)[name]


def test_xavier_normal_statistics_and_zero_biases():
    model = FlatModel(LeNet())
    w = sample_weights(
        model, 64, scheme="xavier", gain=1.0, generator=torch.Generator().manual_seed(0)
    )
    fc1 = _param(model, w, "fc1.weight")  # [64, 120, 400]
    assert abs(fc1.std().item() - math.sqrt(2 / (400 + 120))) < 2e-3
    conv1 = _param(model, w, "conv1.weight")  # fan_in 25, fan_out 150
    assert abs(conv1.std().item() - math.sqrt(2 / 175)) < 5e-3
    assert torch.all(_param(model, w, "fc1.bias") == 0)
    assert not torch.equal(w[0], w[1])  # independent nets


def test_kaiming_and_default_schemes():
    model = FlatModel(LeNet())
    g = torch.Generator().manual_seed(0)
    w = sample_weights(model, 64, scheme="kaiming", generator=g)
    assert abs(_param(model, w, "fc1.weight").std().item() - math.sqrt(2 / 400)) < 2e-3
    w = sample_weights(model, 64, scheme="default", generator=g)
    fc1, b = _param(model, w, "fc1.weight"), _param(model, w, "fc1.bias")
    bound = 1 / math.sqrt(400)
    assert fc1.abs().max() <= bound and fc1.abs().max() > 0.95 * bound
    assert b.abs().max() <= bound and b.abs().max() > 0.9 * bound


def test_norm_layers_start_at_identity():
    model = FlatModel(ConvNet(3, 10, 8, width=4, depth=1))
    w = sample_weights(model, 3, generator=torch.Generator().manual_seed(0))
    assert torch.all(_param(model, w, "features.1.weight") == 1)
    assert torch.all(_param(model, w, "features.1.bias") == 0)


def test_seeded_draws_are_reproducible_and_unknown_modules_fall_back():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.alpha = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.alpha

    model = FlatModel(nn.Sequential(nn.Linear(3, 3), Scale()))
    a = sample_weights(model, 2, generator=torch.Generator().manual_seed(5))
    b = sample_weights(model, 2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.all(a[:, -3:] == 1)  # no reset_parameters: copies the module's value


def test_bad_scheme_and_count():
    model = FlatModel(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown init scheme"):
        sample_weights(model, 1, scheme="orthogonal")
    with pytest.raises(ValueError, match="at least one net"):
        sample_weights(model, 0)
