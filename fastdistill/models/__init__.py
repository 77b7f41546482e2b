"""Model zoo: ordinary ``nn.Module`` classes, run functionally on flat parameter buffers.

``build_model(name, ...)`` is what configurations and the command line use.
"""

from fastdistill.models.image import MLP, AlexCifarNet, ConvNet, LeNet
from fastdistill.models.registry import MODEL_NAMES, build_model

__all__ = ["MLP", "MODEL_NAMES", "AlexCifarNet", "ConvNet", "LeNet", "build_model"]
