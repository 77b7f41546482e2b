"""Export a distilled set for use outside fastdistill (``fastdistill export``).

Formats:

* ``imagefolder``: one PNG per distilled image in ``OUT/<class>/s<step>_i<index>.png`` (class:
  the argmax of the label row, named from the set's metadata when it has class names), which
  ``torchvision.datasets.ImageFolder`` reads, plus ``OUT/labels.json`` with, per file, the soft
  label row, the step index and the learned step sizes of that step (one per epoch). Images are
  un-normalised with the dataset's mean/std when the metadata has them and mapped from
  ``pixel_range`` (``[0, 1]`` widened to the set's min/max: learned pixels leave the natural
  range, and clipping them would change the set) to 8-bit PNG. :func:`read_imagefolder` turns
  such a folder back into a :class:`DistilledSet` (exact up to the 8-bit rounding).
* ``npz``: ``OUT/distilled.npz`` with the set's arrays in their ``[S, N, ...]`` layout:
  ``data``, ``labels``, ``lrs`` (``[T]`` step sizes), ``steps`` (``[S, N]`` step index of each
  example), ``classes`` and ``epochs``.
* ``text``: ``OUT/decoded.txt`` and ``OUT/decoded.json``, every distilled sentence decoded to
  its nearest vocabulary words (:mod:`fastdistill.decode`); needs the text dataset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fastdistill.dataset import as_distilled
from fastdistill.distilled import DistilledSet

FORMATS: tuple[str, ...] = ("imagefolder", "npz", "text")


def export_distilled(
    run: DistilledSet | str | Path,
    fmt: str,
    out: str | Path,
    *,
    text_data: Any | None = None,
    data_root: str | Path | None = None,
) -> list[Path]:
    """Write ``run`` (a set, a ``.safetensors`` file or a run folder) to ``out`` as ``fmt``;
    returns the files written (for ``imagefolder``: ``labels.json`` and the folder)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    d = as_distilled(run).to("cpu")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; pass a folder path")
    if fmt == "npz":
        return [export_npz(d, out)]
    if fmt == "imagefolder":
        return [export_imagefolder(d, out), out]
    return list(export_text(d, out, text_data=text_data, data_root=data_root))


def _dataset_meta(d: DistilledSet) -> dict[str, Any]:
    meta = d.meta.get("dataset")
    return meta if isinstance(meta, dict) else {}


def class_names(d: DistilledSet) -> list[str]:
    """Folder names of the classes: the metadata's class names, else ``0, 1, ...``."""
    k = 2 if d.label_kind == "binary" else d.labels.shape[-1]
    names = _dataset_meta(d).get("class_names")
    if isinstance(names, list) and len(names) == k and len(set(map(str, names))) == k:
        return [_safe_name(str(n)) for n in names]
    return [str(c) for c in range(k)]


def _safe_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_. " else "_" for ch in name).strip()
    return cleaned if cleaned not in ("", ".", "..") else "_"


def label_classes(d: DistilledSet) -> Tensor:
    """``[S, N]`` class of each example: the argmax of its label row (> 0.5 when binary)."""
    if d.label_kind == "binary":
        return (d.labels.detach() > 0.5).long()
    return d.labels.detach().argmax(-1)


def step_sizes(d: DistilledSet) -> list[list[float]]:
    """Per distilled step ``s``, the learned step sizes of its inner steps ``s, s + S, ...``."""
    lrs = d.lrs.double().reshape(d.epochs, d.steps)
    return lrs.t().tolist()


def export_npz(d: DistilledSet, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "distilled.npz"
    S, N = d.data.shape[:2]
    np.savez(
        path,
        data=d.data.detach().numpy(),
        labels=d.labels.detach().numpy(),
        lrs=d.lrs.numpy(),
        steps=np.repeat(np.arange(S, dtype=np.int64)[:, None], N, axis=1),
        classes=d.classes.numpy(),
        epochs=np.int64(d.epochs),
    )
    return path


def _unnormalised(d: DistilledSet) -> Tensor:
    """``[S, N, C, H, W]`` images in the dataset's pixel units (its mean/std undone)."""
    x = d.data.detach().double()
    if x.dim() != 5 or x.shape[2] not in (1, 3):
        raise ValueError(
            f"imagefolder export needs images [S, N, C, H, W] with 1 or 3 channels; this set "
            f"holds {tuple(x.shape)} (for text use --format text, or --format npz)"
        )
    mean, std = _mean_std(d, x.shape[2])
    if mean is not None:
        x = x * std + mean
    return x


def _mean_std(d: DistilledSet, channels: int) -> tuple[Tensor | None, Tensor | None]:
    meta = _dataset_meta(d)
    mean, std = meta.get("mean"), meta.get("std")
    if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == channels:
        shape = (1, 1, -1, 1, 1)
        return (
            torch.tensor(mean, dtype=torch.float64).view(shape),
            torch.tensor(std, dtype=torch.float64).view(shape),
        )
    return None, None


def pixel_range(x: Tensor) -> tuple[float, float]:
    """The range mapped to PNG's [0, 255]: [0, 1], widened to hold every value, since learned
    images leave the natural range and clipping them would change what a net learns."""
    return min(0.0, float(x.min())), max(1.0, float(x.max()))


def export_imagefolder(d: DistilledSet, out: Path) -> Path:
    from torchvision.transforms.functional import to_pil_image

    x = _unnormalised(d)
    lo, hi = pixel_range(x)
    pixels = (x - lo) / (hi - lo)
    names = class_names(d)
    classes = label_classes(d)
    sizes = step_sizes(d)
    S, N = pixels.shape[:2]
    width = max(3, len(str(S - 1))), max(4, len(str(N - 1)))
    files = []
    for s in range(S):
        for i in range(N):
            name = names[int(classes[s, i])]
            rel = f"{name}/s{s:0{width[0]}d}_i{i:0{width[1]}d}.png"
            (out / name).mkdir(parents=True, exist_ok=True)
            levels = (pixels[s, i] * 255).round().clamp(0, 255).to(torch.uint8)
            to_pil_image(levels).save(out / rel)  # 1 channel: grayscale "L", 3: "RGB"
            row = d.labels[s, i].detach().double().reshape(-1).tolist()
            files.append(
                {
                    "file": rel,
                    "class": name,
                    "label": row,
                    "step": s,
                    "index": i,
                    "step_sizes": sizes[s],
                }
            )
    sidecar = {
        "format": "fastdistill.imagefolder/1",
        "class_names": names,
        "label_kind": d.label_kind,
        "steps": S,
        "epochs": d.epochs,
        "lrs": d.lrs.double().tolist(),
        "pixel_range": [lo, hi],
        "mean": _dataset_meta(d).get("mean"),
        "std": _dataset_meta(d).get("std"),
        "files": files,
    }
    path = out / "labels.json"
    path.write_text(json.dumps(sidecar, indent=1), encoding="utf-8")
    return path


def export_text(
    d: DistilledSet, out: Path, *, text_data: Any | None = None, data_root: str | Path | None
) -> tuple[Path, Path]:
    from fastdistill.decode import decode_distilled, write_decoded

    meta = _dataset_meta(d)
    if text_data is None:
        if meta.get("kind") != "text":
            raise ValueError(
                "text export needs a text distilled set; this one is not (its metadata has no "
                "text dataset); use --format imagefolder or npz"
            )
        from fastdistill.data import reload_dataset

        try:
            text_data = reload_dataset(meta, data_root)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(
                f"text export needs the text dataset {meta.get('name')!r} and its word vectors "
                f"to decode against, which could not be loaded ({' '.join(str(err).split())}); "
                "pass --data-root (a folder laid out like ../shared/data)"
            ) from None
    return write_decoded(decode_distilled(d, text_data), out)


def read_imagefolder(folder: str | Path) -> DistilledSet:
    """The distilled set of an ``imagefolder`` export: the PNGs (read with torchvision's
    ``ImageFolder``), their soft labels, steps and step sizes from ``labels.json``, the pixels
    mapped back from ``pixel_range`` and normalised again. The data differ from the exported
    set by at most half an 8-bit step of ``pixel_range`` (divided by std); no init weights."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor

    folder = Path(folder)
    sidecar_path = folder / "labels.json"
    if not sidecar_path.is_file():
        raise ValueError(f"{folder} has no labels.json: not a `fastdistill export` image folder")
    side = json.loads(sidecar_path.read_text(encoding="utf-8"))
    if side.get("format") != "fastdistill.imagefolder/1":
        raise ValueError(f"{sidecar_path}: unknown format {side.get('format')!r}")
    by_file = {f["file"]: f for f in side["files"]}
    images = ImageFolder(str(folder), loader=_read_png)
    S = int(side["steps"])
    N = max(f["index"] for f in side["files"]) + 1
    first = pil_to_tensor(images[0][0])
    data = torch.zeros(S, N, *first.shape, dtype=torch.float64)
    labels = torch.zeros(S, N, len(side["files"][0]["label"]), dtype=torch.float64)
    classes = torch.zeros(S, N, dtype=torch.long)
    seen = 0
    for path, target in images.samples:
        rel = Path(path).relative_to(folder).as_posix()
        entry = by_file.get(rel)
        if entry is None:
            raise ValueError(f"{folder}: {rel} is not listed in labels.json")
        s, i = int(entry["step"]), int(entry["index"])
        data[s, i] = pil_to_tensor(_read_png(path)).double() / 255.0
        labels[s, i] = torch.tensor(entry["label"], dtype=torch.float64)
        classes[s, i] = target
        seen += 1
    if seen != len(by_file):
        raise ValueError(f"{folder}: labels.json lists {len(by_file)} images, found {seen}")
    lo, hi = side["pixel_range"]
    data = data * (hi - lo) + lo
    channels = data.shape[2]
    mean, std = side.get("mean"), side.get("std")
    if isinstance(mean, list) and isinstance(std, list) and len(mean) == channels:
        data = (data - torch.tensor(mean).view(1, 1, -1, 1, 1)) / torch.tensor(std).view(
            1, 1, -1, 1, 1
        )
    if side["label_kind"] == "binary":
        labels = labels[..., 0]
    lrs = torch.tensor(side["lrs"], dtype=torch.float64)
    raw_lrs = lrs + torch.log(-torch.expm1(-lrs))  # inverse softplus
    return DistilledSet(
        data.float(),
        labels.float(),
        raw_lrs.float(),
        classes,
        int(side["epochs"]),
        side["label_kind"],
        meta={"dataset": {"kind": "image", "mean": mean, "std": std}},
    )


def _read_png(path: str | Path) -> Any:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return img.copy()
