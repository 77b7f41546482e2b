"""Real data for dataset distillation: in-memory image datasets and resumable batch sampling.

Every dataset is materialised once as normalised float32 tensors (:class:`ImageData`), because
distillation revisits the real data thousands of times and per-item ``Dataset`` access would
dominate the cost.
"""

from .image_data import ImageData, from_datasets, from_tensors
from .image_datasets import CIFAR10_CLASSES, IMAGE_DATASETS, load_image_dataset
from .paths import default_cache_dir, default_data_root
from .sampler import RealBatchSampler

__all__ = [
    "CIFAR10_CLASSES",
    "IMAGE_DATASETS",
    "ImageData",
    "RealBatchSampler",
    "default_cache_dir",
    "default_data_root",
    "from_datasets",
    "from_tensors",
    "load_image_dataset",
]
