"""Name -> model constructor, so configurations and saved sets can name their architecture."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from fastdistill.models.image import MLP, AlexCifarNet, ConvNet, LeNet
from fastdistill.models.text import BiLSTM, BiRNN, TextConvNet

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet": LeNet,
    "alexcifarnet": AlexCifarNet,
    "convnet": ConvNet,
    "mlp": MLP,
}
# Text models take embedded sequences [N, L, D]: sized by embed_dim/seq_len, not by
# in_channels/image_size.
_TEXT_MODELS: dict[str, Callable[..., nn.Module]] = {
    "textconvnet": TextConvNet,
    "birnn": BiRNN,
    "bilstm": BiLSTM,
}
MODEL_NAMES = tuple(_MODELS)  # image models (tests/test_models.py sizes them as images)
TEXT_MODEL_NAMES = tuple(_TEXT_MODELS)
ALL_MODEL_NAMES = MODEL_NAMES + TEXT_MODEL_NAMES


def is_text_model(name: str) -> bool:
    """Whether ``name`` is a registered text model (input ``[N, L, D]`` embeddings)."""
    return name.lower() in _TEXT_MODELS


def build_model(
    name: str,
    *,
    num_outputs: int,
    in_channels: int | None = None,
    image_size: int | None = None,
    embed_dim: int | None = None,
    seq_len: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Instantiate a registered model; ``num_outputs`` is 1 for binary tasks.

    Image models need ``in_channels`` and ``image_size``; text models ``embed_dim`` and
    ``seq_len``. The other pair is ignored, so one call site can pass a dataset's sizes
    whatever its modality.
    """
    key = name.lower()
    if key in _TEXT_MODELS:
        if embed_dim is None or seq_len is None:
            raise ValueError(f"text model {name!r} needs embed_dim and seq_len")
        return _TEXT_MODELS[key](
            embed_dim=embed_dim, num_outputs=num_outputs, seq_len=seq_len, **kwargs
        )
    if key not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(ALL_MODEL_NAMES)}")
    if in_channels is None or image_size is None:
        raise ValueError(f"image model {name!r} needs in_channels and image_size")
    return _MODELS[key](
        in_channels=in_channels, num_outputs=num_outputs, image_size=image_size, **kwargs
    )


def build_model_for(name: str, data: Any, **kwargs: Any) -> nn.Module:
    """A registered model sized for a dataset (``fastdistill.data.DistillData``): one output
    for binary tasks, else one per class."""
    outputs = 1 if data.binary else data.num_classes
    return build_model(name, num_outputs=outputs, **data.model_kwargs(), **kwargs)
