"""Name -> model constructor, so configurations and saved sets can name their architecture."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from fastdistill.models.image import MLP, AlexCifarNet, ConvNet, LeNet

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet": LeNet,
    "alexcifarnet": AlexCifarNet,
    "convnet": ConvNet,
    "mlp": MLP,
}
MODEL_NAMES = tuple(_MODELS)


def build_model(
    name: str,
    *,
    in_channels: int,
    num_outputs: int,
    image_size: int,
    **kwargs: Any,
) -> nn.Module:
    """Instantiate a registered model; ``num_outputs`` is 1 for binary tasks."""
    try:
        cls = _MODELS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}"
        ) from None
    return cls(in_channels=in_channels, num_outputs=num_outputs, image_size=image_size, **kwargs)
