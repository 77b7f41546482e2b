"""One entry point that loads any supported dataset by name, and reloads a saved description."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastdistill.data.image_datasets import load_image_dataset
from fastdistill.data.own import (
    is_own_image,
    is_own_text,
    load_image_folder,
    load_text_table,
    reload_own_text,
)
from fastdistill.data.protocol import DistillData
from fastdistill.data.text import is_text_dataset, load_text_dataset, reload_text_dataset


def load_dataset(
    name: str, root: str | Path | None = None, *, download: bool = False, **kwargs: Any
) -> DistillData:
    """Load an image or text dataset by name; ``kwargs`` go to its loader (``image_size`` for
    images; ``seq_len``, ``vectors``, ``max_vocab``, ``min_freq`` for text)."""
    if is_own_image(name):  # imagefolder:PATH (fastdistill/data/own.py)
        return load_image_folder(name, **kwargs)
    if is_own_text(name):  # csv:PATH, tsv:PATH, jsonl:PATH
        return load_text_table(name, **kwargs)
    if is_text_dataset(name):
        return load_text_dataset(name, root, download=download, **kwargs)
    return load_image_dataset(name, root, download=download, **kwargs)


def reload_dataset(description: dict[str, Any], root: str | Path | None = None) -> DistillData:
    """Load the dataset a distilled set was made from, given its ``describe()`` record."""
    if description.get("kind") == "text":
        if (description.get("source") or {}).get("loader") == "own_text":
            return reload_own_text(description["source"])
        return reload_text_dataset(description, root)
    if is_own_image(description["name"]):
        return load_image_folder(description["name"], image_size=int(description["image_size"][0]))
    return load_image_dataset(
        description["name"], root, image_size=int(description["image_size"][0])
    )
