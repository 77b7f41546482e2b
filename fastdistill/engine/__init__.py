"""The distillation engine: functional nets, init distributions, hypergradients, outer loop."""

from fastdistill.engine.functional import FlatModel
from fastdistill.engine.hypergrad import ENGINES, Hypergradient, hypergradient
from fastdistill.engine.init import INIT_SCHEMES, sample_weights
from fastdistill.engine.losses import inner_loss, outer_loss

__all__ = [
    "ENGINES",
    "INIT_SCHEMES",
    "FlatModel",
    "Hypergradient",
    "hypergradient",
    "inner_loss",
    "outer_loss",
    "sample_weights",
]
