"""What the distillation engine needs from a dataset, whatever its modality.

Images and text differ in how stored examples become model inputs (text token ids are
embedded by a frozen table; distilled text lives directly in embedding space), so the engine
talks to datasets only through this protocol.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class DistillData(Protocol):
    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    class_names: list[str]

    @property
    def binary(self) -> bool:
        """One scalar logit and label per example (BCE) instead of K classes."""
        ...

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one model input, hence of one distilled sample."""
        ...

    def model_inputs(self, x: Tensor) -> Tensor:
        """Stored examples (a batch of ``train_x``/``test_x``) -> model inputs."""
        ...

    def model_kwargs(self) -> dict[str, int]:
        """Keyword arguments that size a registered model for this data."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description saved with distilled sets."""
        ...

    def to(self, device: torch.device | str) -> DistillData: ...


def validate_classes(where: str, num_classes: int, class_names: list[str]) -> None:
    """A positive class count with one name per class."""
    if num_classes < 1:
        raise ValueError(f"{where}: num_classes must be >= 1, got {num_classes}")
    if len(class_names) != num_classes:
        raise ValueError(f"{where}: {len(class_names)} class_names for num_classes={num_classes}")


def validate_labels(
    where: str,
    train_y: Tensor,
    test_y: Tensor,
    num_classes: int,
    class_names: list[str],
    example: str,
) -> None:
    """Labels in ``[0, num_classes)`` and every class present in training: an empty class
    would otherwise surface much later as a meaningless distillation result."""
    for split, y in (("train", train_y), ("test", test_y)):
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(
                f"{where}: {split}_y has labels in [{int(y.min())}, {int(y.max())}], "
                f"expected [0, {num_classes})"
            )
    counts = torch.bincount(train_y.cpu(), minlength=num_classes)
    empty = [i for i in range(num_classes) if counts[i] == 0]
    if empty:
        names = ", ".join(f"{i} ({class_names[i]!r})" for i in empty)
        raise ValueError(
            f"{where}: class {names} has no training examples; every class needs at least "
            f"one real {example} to distill from"
        )
