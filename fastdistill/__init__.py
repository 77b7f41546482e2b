"""fastdistill: soft-label and text dataset distillation with fused C++/CUDA kernels.

The data flow: user API (``fastdistill distill``, :func:`distill`) -> the outer loop
(:class:`Distiller`) -> engine (functional nets, inner steps, hypergradients) -> ops
(``fastdistill.ops``: compiled kernels or the pure-PyTorch reference, chosen per call).
``docs/ARCHITECTURE.md`` has the layers and what each may import.
"""

from fastdistill import ops
from fastdistill.config import PRESETS, DistillConfig, get_preset
from fastdistill.dataset import DistilledDataset, train_on
from fastdistill.distilled import DistilledSet
from fastdistill.distiller import Distiller, NonFiniteLossError
from fastdistill.engine import FlatModel, Hypergradient, hypergradient, sample_weights
from fastdistill.evaluate import Accuracy, evaluate_distilled
from fastdistill.full_data import FullDataOptions, FullDataResult, train_full_data
from fastdistill.ops import backend_info

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "Accuracy",
    "DistillConfig",
    "DistilledDataset",
    "DistilledSet",
    "Distiller",
    "FlatModel",
    "FullDataOptions",
    "FullDataResult",
    "Hypergradient",
    "NonFiniteLossError",
    "backend_info",
    "distill",
    "evaluate_distilled",
    "get_preset",
    "hypergradient",
    "ops",
    "sample_weights",
    "train_full_data",
    "train_on",
]


def distill(preset_or_config: str | DistillConfig, **overrides) -> Distiller:
    """Run a distillation to completion and return the ``Distiller`` (``.distilled``,
    ``.evaluate()``). ``overrides`` change configuration fields, e.g. ``iterations=100``."""
    config = (
        get_preset(preset_or_config).config
        if isinstance(preset_or_config, str)
        else preset_or_config
    )
    distiller = Distiller(config.replace(**overrides) if overrides else config)
    distiller.fit()
    return distiller
