"""Models: the paper's shapes, and functional runs on flat buffers equal ordinary calls."""

from __future__ import annotations

import pytest
import torch

from fastdistill.engine import FlatModel, sample_weights
from fastdistill.models import MODEL_NAMES, build_model

SHAPES = {"lenet": (1, 28), "alexcifarnet": (3, 32), "convnet": (3, 32), "mlp": (1, 28)}


def test_lenet_has_the_papers_parameter_count():
    model = build_model("lenet", in_channels=1, num_outputs=10, image_size=28)
    assert sum(p.numel() for p in model.parameters()) == 61_706


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_flat_forward_equals_module_forward(name):
    c, size = SHAPES[name]
    module = build_model(name, in_channels=c, num_outputs=7, image_size=size)
    model = FlatModel(module)
    x = torch.randn(5, c, size, size)
    assert torch.allclose(
        model.forward(model.flatten_module()[None], x, train=False)[0], module(x), atol=1e-5
    )
    w = sample_weights(model, 3, generator=torch.Generator().manual_seed(0))
    batched = model.forward(w, x, train=True)
    assert batched.shape == (3, 5, 7)
    for i in range(3):
        assert torch.allclose(batched[i], model.forward(w[i : i + 1], x, train=True)[0], atol=1e-5)


def test_per_net_inputs_and_bad_shapes():
    model = FlatModel(build_model("mlp", in_channels=1, num_outputs=3, image_size=4))
    w = torch.randn(2, model.num_params)
    x = torch.randn(2, 6, 1, 4, 4)
    out = model.forward(w, x, train=True, batched_input=True)
    assert torch.allclose(out[1], model.forward(w[1:], x[1], train=True)[0], atol=1e-6)
    with pytest.raises(ValueError, match=r"\[B, P\]"):
        model.forward(w[0], x[0], train=True)
    with pytest.raises(ValueError, match="the model needs"):
        model.forward(w[:, :5], x[0], train=True)


def test_unknown_model_and_too_small_images():
    with pytest.raises(ValueError, match="known models"):
        build_model("resnet", in_channels=1, num_outputs=2, image_size=28)
    with pytest.raises(ValueError, match="at least 4x4"):
        build_model("lenet", in_channels=1, num_outputs=2, image_size=3)
    small = build_model("lenet", in_channels=1, num_outputs=10, image_size=8)
    assert small(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_batchnorm_does_not_share_running_stats_across_nets():
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    model = FlatModel(module)
    assert not list(model.module.buffers())  # running stats removed, batch stats always
    w = torch.randn(2, model.num_params)
    out = model.forward(w, torch.randn(8, 4), train=True)
    assert out.shape == (2, 8, 3)
