"""Model zoo: ordinary ``nn.Module`` classes, run functionally on flat parameter buffers.

``build_model(name, ...)`` is what configurations and the command line use.
"""

from fastdistill.models.image import MLP, AlexCifarNet, ConvNet, LeNet
from fastdistill.models.registry import (
    ALL_MODEL_NAMES,
    MODEL_NAMES,
    TEXT_MODEL_NAMES,
    build_model,
    build_model_for,
    is_text_model,
)
from fastdistill.models.text import BiLSTM, BiRNN, TextConvNet

__all__ = [
    "ALL_MODEL_NAMES",
    "MLP",
    "MODEL_NAMES",
    "TEXT_MODEL_NAMES",
    "AlexCifarNet",
    "BiLSTM",
    "BiRNN",
    "ConvNet",
    "LeNet",
    "TextConvNet",
    "build_model",
    "build_model_for",
    "is_text_model",
]
