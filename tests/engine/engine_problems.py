"""Small float64 problems shared by the engine tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fastdistill.engine import FlatModel, sample_weights
from fastdistill.models import MLP, AlexCifarNet, ConvNet, LeNet

GOLDEN = "golden-reference"


class DropoutMLP(nn.Module):
    """A tiny stochastic model: the engines must replay its dropout masks."""

    def __init__(self, in_channels=1, num_outputs=3, image_size=4):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * image_size * image_size, 16)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(16, num_outputs)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.fc1(x.flatten(1)))))


# name -> (constructor, channels, image size): kept small so float64 double backward is quick
MODELS = {
    "lenet": (lambda: LeNet(1, 4, 28), 1, 28),
    "alexcifarnet": (lambda: AlexCifarNet(3, 4, 16), 3, 16),
    "convnet": (lambda: ConvNet(3, 4, 8, width=8, depth=2), 3, 8),
    "mlp": (lambda: MLP(1, 4, 6, hidden=(12, 10)), 1, 6),
}


def make_problem(
    name: str,
    *,
    nets: int = 1,
    steps: int = 2,
    epochs: int = 2,
    n: int = 4,
    real: int = 16,
    seed: int = 0,
):
    """A random float64 problem: model, w0 [nets, P], data, labels, raw lrs, real batch."""
    torch.manual_seed(seed)
    ctor, c, size = MODELS[name]
    module = ctor().double()
    model = FlatModel(module)
    gen = torch.Generator().manual_seed(seed)
    w0 = sample_weights(model, nets, generator=gen, dtype=torch.float64)
    k = module(torch.zeros(1, c, size, size, dtype=torch.float64)).shape[-1]
    data = torch.randn(steps, n, c, size, size, dtype=torch.float64)
    labels = (
        torch.randn(steps, n, k, dtype=torch.float64) * 0.3
        + torch.eye(k, dtype=torch.float64)[torch.arange(n) % k]
    )
    raw = torch.randn(steps * epochs, dtype=torch.float64) * 0.2 - 2.0
    real_x = torch.randn(real, c, size, size, dtype=torch.float64)
    real_y = torch.randint(0, k, (real,))
    return model, w0, data, labels, raw, real_x, real_y


def load_golden(path):
    z = np.load(path)
    return {k: torch.from_numpy(z[k]) for k in z.files}
