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
