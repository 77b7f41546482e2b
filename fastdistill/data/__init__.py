"""Real data for dataset distillation: in-memory image and text datasets, batch sampling.

Every dataset is materialised once as normalised float32 tensors (:class:`ImageData`), because
distillation revisits the real data thousands of times and per-item ``Dataset`` access would
dominate the cost.
"""

from .image_data import ImageData, from_datasets, from_tensors
from .image_datasets import CIFAR10_CLASSES, IMAGE_DATASETS, load_image_dataset
from .loaders import load_dataset, reload_dataset
from .paths import default_cache_dir, default_data_root
from .protocol import DistillData
from .sampler import RealBatchSampler
from .text import (
    TEXT_DATASETS,
    TextData,
    from_texts,
    load_text_dataset,
    reload_text_dataset,
    text_from_files,
)
from .text_vocab import Vocab, tokenize
from .word_vectors import Coverage, WordVectors, load_word_vectors

__all__ = [
    "CIFAR10_CLASSES",
    "IMAGE_DATASETS",
    "TEXT_DATASETS",
    "Coverage",
    "DistillData",
    "ImageData",
    "RealBatchSampler",
    "TextData",
    "Vocab",
    "WordVectors",
    "default_cache_dir",
    "default_data_root",
    "from_datasets",
    "from_tensors",
    "from_texts",
    "load_dataset",
    "load_image_dataset",
    "load_text_dataset",
    "load_word_vectors",
    "reload_dataset",
    "reload_text_dataset",
    "text_from_files",
    "tokenize",
]
