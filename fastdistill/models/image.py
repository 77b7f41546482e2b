"""Image classifiers used by the paper (LeNet, AlexCifarNet) and by later distillation work.

Layers are plain ``torch.nn`` modules with no in-place ops and no running statistics, so the
engine can run them under ``torch.func.functional_call``/``vmap`` and differentiate twice.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from fastdistill import ops


class LocalResponseNorm(nn.LocalResponseNorm):
    """``nn.LocalResponseNorm`` on ``fastdistill.ops.local_response_norm``: the same values and
    derivatives, in one fused pass each on the CPU instead of torch's pad + avg_pool3d chain."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.local_response_norm(input, self.size, self.alpha, self.beta, self.k)


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` on ``fastdistill.ops.max_pool2d`` where it applies (no dilation, no ceil
    mode, no returned indices): the same values, indices and derivatives, without ATen's slow
    channels-first CPU kernel."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.dilation not in (1, (1, 1)) or self.ceil_mode or self.return_indices:
            return super().forward(input)
        if input.dtype not in (torch.float32, torch.float64) or input.dim() not in (3, 4):
            return super().forward(input)
        return ops.max_pool2d(input, self.kernel_size, self.stride, self.padding)


class Linear(nn.Linear):
    """``nn.Linear`` on ``fastdistill.ops.linear``: the small-product kernels for few-row
    inputs (the distilled images' inner steps) in every derivative order, the library GEMM for
    large products."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.linear(input, self.weight, self.bias)


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class LeNet(nn.Module):
    """LeNet-5 as in docs/algorithm.md §7: 61,706 parameters for 1x28x28 inputs and 10 classes.

    The first conv pads by 2 (by 0 at 32 px, as the original), so the flattened features are
    16x5x5 at 28 and 32 px. Small images (e.g. 8x8 digits) also pad the second conv, so LeNet
    runs on them natively instead of on upscaled copies.
    """

    def __init__(self, in_channels: int = 1, num_outputs: int = 10, image_size: int = 28) -> None:
        super().__init__()
        pad1 = 0 if image_size == 32 else 2
        side = _conv_out(image_size, 5, padding=pad1) // 2
        pad2 = 2 if side < 8 else 0
        side = _conv_out(side, 5, padding=pad2) // 2
        if side < 1:
            raise ValueError(f"LeNet needs images of at least 4x4 pixels, got {image_size}")
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=pad1)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=pad2)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_outputs)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # relu(maxpool(z)) == maxpool(relu(z)) (max commutes with a monotone map), values and
        # gradients alike; pooling first runs the ReLU on a quarter of the elements.
        x = self.act(self.pool(self.conv1(x)))
        x = self.act(self.pool(self.conv2(x)))
        x = x.flatten(1)
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))
        return self.fc3(x)

    def fused_layers(self) -> list[tuple[str, nn.Module]]:
        """``forward`` as a flat layer list (qualified name, module) for the fused engine."""
        act, pool, flat = ("act", self.act), ("pool", self.pool), ("", nn.Flatten())
        return [
            ("conv1", self.conv1), pool, act, ("conv2", self.conv2), pool, act, flat,
            ("fc1", self.fc1), act, ("fc2", self.fc2), act, ("fc3", self.fc3),
        ]  # fmt: skip


class AlexCifarNet(nn.Module):
    """The small AlexNet of the CIFAR-10 experiments (docs/algorithm.md §7), with local response norm."""

    def __init__(self, in_channels: int = 3, num_outputs: int = 10, image_size: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 5, padding=2),
            nn.ReLU(),
            MaxPool2d(3, stride=2, padding=1),
            LocalResponseNorm(4, alpha=0.001 / 9.0, beta=0.75, k=1.0),
            nn.Conv2d(64, 64, 5, padding=2),
            nn.ReLU(),
            LocalResponseNorm(4, alpha=0.001 / 9.0, beta=0.75, k=1.0),
            MaxPool2d(3, stride=2, padding=1),
        )
        side = _conv_out(_conv_out(image_size, 3, 2, 1), 3, 2, 1)
        self.classifier = nn.Sequential(
            Linear(64 * side * side, 384),
            nn.ReLU(),
            Linear(384, 192),
            nn.ReLU(),
            Linear(192, num_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))

    def fused_layers(self) -> list[tuple[str, nn.Module]]:
        """``forward`` as a layer list (qualified name, module) for the fused engine."""
        return [("features", self.features), ("", nn.Flatten()), ("classifier", self.classifier)]


class ConvNet(nn.Module):
    """The ConvNet of modern dataset-distillation work: ``depth`` blocks of conv3x3 -> instance
    norm -> ReLU -> 2x2 average pool, then one linear layer.

    Instance norm is ``GroupNorm(width, width)`` (one group per channel, affine), which has no
    running statistics and therefore cannot leak state between the nets of a batch.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_outputs: int = 10,
        image_size: int = 32,
        width: int = 128,
        depth: int = 3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = in_channels, image_size
        for _ in range(depth):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(),
                nn.AvgPool2d(2),
            ]
            channels, side = width, side // 2
        if side < 1:
            raise ValueError(f"ConvNet of depth {depth} needs images of at least {2**depth} px")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * side * side, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))

    def fused_layers(self) -> list[tuple[str, nn.Module]]:
        """``forward`` as a layer list (qualified name, module) for the fused engine."""
        return [("features", self.features), ("", nn.Flatten()), ("classifier", self.classifier)]


class MLP(nn.Module):
    """A fully connected ReLU network on flattened images."""

    def __init__(
        self,
        in_channels: int = 1,
        num_outputs: int = 10,
        image_size: int = 28,
        hidden: tuple[int, ...] = (256, 256),
    ) -> None:
        super().__init__()
        sizes = [in_channels * image_size * image_size, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def fused_layers(self) -> list[tuple[str, nn.Module]]:
        """``forward`` as a layer list (qualified name, module) for the fused engine."""
        return [("net", self.net)]
