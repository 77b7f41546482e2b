"""The distilled set: learnable data, labels and step sizes, and its safe on-disk format.

Saved as one safetensors file (tensors) whose header metadata holds JSON (schedule, label
semantics, model and dataset description). Loading never executes code, unlike pickle.

Every file written here (distilled sets and checkpoints) is verifiable: the metadata holds the
SHA-256 of each tensor's bytes with its dtype and shape, and of the other metadata entries
(``fastdistill.sha256``, format ``fastdistill.integrity`` = ``"1"``). Loading checks them and
raises :class:`ArtifactError` naming the file and the tensor; files written before checksums
existed load with an :class:`UnverifiedArtifactWarning`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor

from fastdistill.engine.losses import LabelKind

FORMAT = "fastdistill.distilled/1"
LabelInit = Literal["onehot", "smoothed", "random"]
LABEL_INITS: tuple[str, ...] = ("onehot", "smoothed", "random")
INTEGRITY_KEY = "fastdistill.integrity"  # the version of the checksum record
INTEGRITY_VERSION = "1"
CHECKSUM_KEY = "fastdistill.sha256"
#: Tensors of a distilled set that must hold finite values.
FINITE_TENSORS: tuple[str, ...] = ("data", "labels", "raw_lrs", "init_weights")


class ArtifactError(ValueError):
    """A checkpoint or distilled-set file that cannot be used: not a safetensors file, damaged,
    failing its checksums or holding non-finite values. ``path`` and ``tensor`` (or None) say
    where; the message is one line naming both."""

    def __init__(self, path: str | Path, problem: str, tensor: str | None = None) -> None:
        self.path = Path(path)
        self.tensor = tensor
        self.problem = problem
        joined = problem.startswith(("is ", "has ", "cannot ", "was "))
        super().__init__(f"{path} {problem}" if joined else f"{path}: {problem}")


class UnverifiedArtifactWarning(UserWarning):
    """A file without checksums (written before fastdistill stored them) was loaded as is."""


def inverse_softplus(x: float) -> float:
    """``raw`` such that ``softplus(raw) == x`` (x > 0)."""
    if x <= 0:
        raise ValueError(f"step sizes must be positive, got {x}")
    return x + math.log(-math.expm1(-x))


@dataclass
class DistilledSet:
    """``S`` distilled steps of ``N`` examples, replayed for ``epochs`` epochs (``T = S*E``).

    Attributes:
        data: ``[S, N, ...]`` distilled inputs (images, or embedding sequences for text).
        labels: ``[S, N, K]`` label rows, or ``[S, N]`` scalars for binary tasks.
        raw_lrs: ``[T]`` raw step sizes; the step size of inner step t is ``softplus(raw_lrs[t])``.
        classes: ``[S, N]`` class each example was initialised for (plots, hard labels).
        epochs: ``E``; step t uses distilled batch ``t mod S``.
        label_kind: ``soft`` (raw label rows as weights), ``softmax`` or ``binary``.
        learn_labels: False for hard, frozen labels (the original dataset distillation).
        init_weights: ``[P]`` fixed initial weights when distilled for a fixed init, else None.
        meta: JSON-serialisable description (model, dataset, class names, normalisation, config).
    """

    data: Tensor
    labels: Tensor
    raw_lrs: Tensor
    classes: Tensor
    epochs: int
    label_kind: LabelKind = "soft"
    learn_labels: bool = True
    init_weights: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        S, N = self.data.shape[:2]
        if self.labels.shape[:2] != (S, N) or self.classes.shape != (S, N):
            raise ValueError(
                f"data {tuple(self.data.shape)}, labels {tuple(self.labels.shape)} and classes "
                f"{tuple(self.classes.shape)} must share the leading [S, N]"
            )
        if self.epochs < 1 or self.raw_lrs.shape != (S * self.epochs,):
            raise ValueError(
                f"raw_lrs must have T = S*E = {S}*{self.epochs} entries, got "
                f"{tuple(self.raw_lrs.shape)}"
            )
        if (self.label_kind == "binary") != (self.labels.dim() == 2):
            raise ValueError(f"labels {tuple(self.labels.shape)} do not fit {self.label_kind!r}")

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def initialize(
        cls,
        *,
        num_classes: int,
        sample_shape: tuple[int, ...],
        steps: int = 1,
        epochs: int = 3,
        images_per_class: int = 1,
        classes_per_step: int | None = None,
        learn_labels: bool = True,
        label_init: LabelInit = "onehot",
        softmax_targets: bool = False,
        binary: bool = False,
        distill_lr: float = 0.02,
        smoothing: float = 0.1,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        meta: dict[str, Any] | None = None,
    ) -> DistilledSet:
        """A fresh set: ``N(0, 1)`` data, class-interleaved labels, constant step sizes.

        Each step holds ``classes_per_step`` classes (default: all) times ``images_per_class``
        in the order ``c0, c1, ..., c0, c1, ...``; consecutive steps continue the class cycle,
        so fewer examples than classes (e.g. 5 images for 10 classes) still work.
        """
        if num_classes < 2:
            raise ValueError(f"need at least 2 classes, got {num_classes}")
        if binary and num_classes != 2:
            raise ValueError("binary tasks have exactly 2 classes")
        cps = num_classes if classes_per_step is None else classes_per_step
        if not 1 <= cps <= num_classes:
            raise ValueError(f"classes_per_step must be in [1, {num_classes}], got {cps}")
        if steps < 1 or epochs < 1 or images_per_class < 1:
            raise ValueError("steps, epochs and images_per_class must be >= 1")
        if label_init not in LABEL_INITS:
            raise ValueError(f"unknown label_init {label_init!r}; choose one of {LABEL_INITS}")
        n = cps * images_per_class
        classes = torch.tensor(
            [[(s * cps + i % cps) % num_classes for i in range(n)] for s in range(steps)]
        )
        data = torch.randn(steps, n, *sample_shape, generator=generator, dtype=dtype)
        if binary:
            labels = classes.to(dtype)
            if label_init == "smoothed":
                labels = labels * (1 - smoothing) + (1 - labels) * smoothing
            elif label_init == "random":
                labels = torch.randn(steps, n, generator=generator, dtype=dtype)
        else:
            labels = F.one_hot(classes, num_classes).to(dtype)
            if label_init == "smoothed":
                labels = labels * (1 - smoothing) + (1 - labels) * smoothing / (num_classes - 1)
            elif label_init == "random":
                labels = torch.randn(steps, n, num_classes, generator=generator, dtype=dtype)
        kind: LabelKind = "binary" if binary else ("softmax" if softmax_targets else "soft")
        raw = torch.full((steps * epochs,), inverse_softplus(distill_lr), dtype=dtype)
        return cls(data, labels, raw, classes, epochs, kind, learn_labels, None, dict(meta or {}))

    # -- views ----------------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        return self.data.shape[0]

    @property
    def total_steps(self) -> int:
        return self.raw_lrs.numel()

    @property
    def num_samples(self) -> int:
        return self.data.shape[0] * self.data.shape[1]

    @property
    def lrs(self) -> Tensor:
        """The step sizes ``softplus(raw_lrs)``."""
        return F.softplus(self.raw_lrs.detach())

    def learnable(self) -> list[Tensor]:
        """Tensors the outer optimiser updates (labels only when they are learned)."""
        return [self.data, self.raw_lrs] + ([self.labels] if self.learn_labels else [])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """A copy on another device/dtype (classes stay int64)."""

        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().to(device=device, dtype=dtype).clone()

        return DistilledSet(
            mv(self.data),
            mv(self.labels),
            mv(self.raw_lrs),
            self.classes.to(device),
            self.epochs,
            self.label_kind,
            self.learn_labels,
            mv(self.init_weights),
            dict(self.meta),
        )

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename): an interrupted save leaves the old file."""
        path = Path(path)
        tensors = {
            "data": self.data,
            "labels": self.labels,
            "raw_lrs": self.raw_lrs,
            "classes": self.classes,
        }
        if self.init_weights is not None:
            tensors["init_weights"] = self.init_weights
        header = {
            "epochs": self.epochs,
            "label_kind": self.label_kind,
            "learn_labels": self.learn_labels,
            "meta": self.meta,
        }
        atomic_save_safetensors(tensors, path, {"format": FORMAT, "header": json.dumps(header)})
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> DistilledSet:
        """Read and verify a set written by :meth:`save` (checksums, finite values, shapes);
        any problem raises an :class:`ArtifactError` naming the file and the tensor."""
        tensors, metadata = load_safetensors(path, device, finite=FINITE_TENSORS)
        if metadata.get("format") != FORMAT:
            raise ArtifactError(path, f"is not a fastdistill distilled set (format {FORMAT!r})")
        try:
            header = json.loads(metadata["header"])
            missing = [k for k in ("data", "labels", "raw_lrs", "classes") if k not in tensors]
            if missing:
                raise ArtifactError(path, f"tensor {missing[0]!r} is missing", missing[0])
            return cls(
                data=tensors["data"],
                labels=tensors["labels"],
                raw_lrs=tensors["raw_lrs"],
                classes=tensors["classes"],
                epochs=int(header["epochs"]),
                label_kind=header["label_kind"],
                learn_labels=bool(header["learn_labels"]),
                init_weights=tensors.get("init_weights"),
                meta=header.get("meta", {}),
            )
        except ArtifactError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            detail = f"missing {err}" if isinstance(err, KeyError) else str(err)
            raise ArtifactError(path, f"has an invalid distilled-set header ({detail})") from None


def tensor_sha256(t: Tensor) -> str:
    """SHA-256 of a tensor's bytes (contiguous, CPU, native byte order)."""
    flat = t.detach().contiguous().cpu().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def _metadata_sha256(metadata: dict[str, str]) -> str:
    rest = {k: v for k, v in metadata.items() if k != CHECKSUM_KEY}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save_safetensors(
    tensors: dict[str, Tensor],
    path: Path,
    metadata: dict[str, str],
    *,
    keep_previous: Path | None = None,
) -> Path:
    """Write a verifiable safetensors file atomically.

    The tensors go to a temp file in the same folder (``.NAME.XXXX.tmp``), which is fsynced
    and renamed over ``path``; the folder is fsynced after the rename. With ``keep_previous``,
    an existing ``path`` is first renamed to it, so the last good file survives. The metadata
    gains the checksum record (any old one in ``metadata`` is replaced). An interrupted save
    removes its temp file (a SIGKILL leaves it: :func:`remove_orphan_temps`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: v for k, v in metadata.items() if k not in (CHECKSUM_KEY, INTEGRITY_KEY)}
    meta[INTEGRITY_KEY] = INTEGRITY_VERSION
    record = {
        "tensors": {
            k: {
                "sha256": tensor_sha256(v),
                "dtype": str(v.dtype).removeprefix("torch."),
                "shape": list(v.shape),
            }
            for k, v in clean.items()
        },
        "metadata": _metadata_sha256(meta),
    }
    meta[CHECKSUM_KEY] = json.dumps(record, sort_keys=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        blob = save(clean, metadata=meta)
        # safetensors writes its metadata map in a random order: sorted keys make the same
        # content the same bytes (runs compare bit-for-bit; files can be checksummed whole)
        n = int.from_bytes(blob[:8], "little")
        header = json.dumps(json.loads(blob[8 : 8 + n]), sort_keys=True, separators=(",", ":"))
        head = header.encode()
        head += b" " * (-len(head) % 8)
        with open(tmp, "wb") as f:
            f.write(len(head).to_bytes(8, "little"))
            f.write(head)
            f.write(memoryview(blob)[8 + n :])
            f.flush()
            os.fsync(f.fileno())
        del blob
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def remove_orphan_temps(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the temp files (``.NAME.XXXX.tmp``) a killed save of ``folder/NAME`` left."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for name in names:
            for orphan in folder.glob(f".{name}.*.tmp"):
                orphan.unlink(missing_ok=True)
                removed.append(orphan)
    return removed


def _why_unreadable(path: Path, err: Exception) -> str:
    """One clause saying what ``path`` is, for a file safetensors refused."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if head.startswith((b"\x80", b"PK\x03\x04")):
        kind = "a pickle" if head.startswith(b"\x80") else "a zip (torch.save)"
        return f"is not a safetensors file (it is {kind} file; fastdistill never unpickles files)"
    if len(head) >= 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 8 + n > size:
            return f"is a truncated safetensors file ({size} bytes, header needs {8 + n})"
        return f"is a damaged or truncated safetensors file ({err})"
    if size == 0:
        return "is not a safetensors file (it is empty)"
    return f"is not a safetensors file ({err})"


def load_safetensors(
    path: str | Path,
    device: torch.device | str = "cpu",
    *,
    finite: Iterable[str] | Callable[[str], bool] = (),
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file and verify it; ``(tensors, metadata)``.

    Checks the checksum record written by :func:`atomic_save_safetensors` (tensor names,
    dtypes, shapes, SHA-256 of the bytes and of the metadata) and that the tensors named by
    ``finite`` (names, or a predicate on names) hold only finite values. Any failure raises an
    :class:`ArtifactError` naming the file (and the tensor). A file without a checksum record
    loads with an :class:`UnverifiedArtifactWarning`.
    """
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(path, "is a folder, not a safetensors file")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ArtifactError(path, _why_unreadable(path, err)) from None
    _verify(path, tensors, metadata)
    wanted = finite if callable(finite) else set(finite).__contains__
    for name, t in tensors.items():
        if wanted(name) and t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise ArtifactError(
                    path,
                    f"tensor {name!r} holds {bad} non-finite value(s) (NaN/inf) of {t.numel()}; "
                    "the file is unusable (re-create it)",
                    name,
                )
    if str(device) != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, metadata


def _verify(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    if CHECKSUM_KEY not in metadata and INTEGRITY_KEY not in metadata:
        warnings.warn(
            f"{path} has no checksums (written by an older fastdistill); loaded unverified",
            UnverifiedArtifactWarning,
            stacklevel=3,
        )
        return
    damaged = "(the file is damaged; use another copy or re-create it)"
    if metadata.get(INTEGRITY_KEY) != INTEGRITY_VERSION:
        raise ArtifactError(
            path, f"has an unknown checksum format {metadata.get(INTEGRITY_KEY)!r} {damaged}"
        )
    try:
        record = json.loads(metadata[CHECKSUM_KEY])
        sums = record["tensors"]
        meta_sum = record["metadata"]
        if not isinstance(sums, dict):
            raise TypeError
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(path, f"has a damaged checksum record {damaged}") from None
    if meta_sum != _metadata_sha256(metadata):
        raise ArtifactError(path, f"header metadata fails its SHA-256 check {damaged}")
    for name in sorted(set(sums) - set(tensors)):
        raise ArtifactError(path, f"tensor {name!r} is missing {damaged}", name)
    for name in sorted(set(tensors) - set(sums)):
        raise ArtifactError(path, f"tensor {name!r} is not in its checksum record {damaged}", name)
    for name, t in tensors.items():
        want = sums[name]
        got = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
        if not isinstance(want, dict) or any(want.get(k) != v for k, v in got.items()):
            raise ArtifactError(
                path, f"tensor {name!r} has another dtype/shape than recorded {damaged}", name
            )
        if want.get("sha256") != tensor_sha256(t):
            raise ArtifactError(path, f"tensor {name!r} fails its SHA-256 check {damaged}", name)
