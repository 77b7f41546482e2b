"""Write scikit-learn's 8x8 digits (shipped with scikit-learn) as an image folder
``OUT/train/<digit>/*.png`` and ``OUT/test/<digit>/*.png``: the layout torchvision's
``ImageFolder`` reads, and what ``--set dataset=imagefolder:OUT`` distills.

    python examples/digits_image_folder.py /tmp/digits-folder
    fastdistill distill --preset digits-lenet-fixed-10 --set dataset=imagefolder:/tmp/digits-folder \
        --set image_size=28 --out runs/own-digits
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def write_digits_folder(out: Path, test_fraction: float = 0.25, seed: int = 0) -> int:
    """Write the folder; returns the number of images written."""
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)  # 0..16 -> 0..255
    train, test = train_test_split(
        np.arange(len(images)), test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    for split, index in (("train", train), ("test", test)):
        for i in index:
            folder = out / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(folder / f"{i:04d}.png")
    return len(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder to write (created)")
    args = ap.parse_args()
    n = write_digits_folder(args.out)
    print(f"wrote {n} images under {args.out}/train and {args.out}/test")


if __name__ == "__main__":
    main()
