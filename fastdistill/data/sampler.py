"""Resumable sampling of real mini-batches for the distillation outer loop."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["RealBatchSampler"]


class RealBatchSampler:
    """Draws mini-batches of indices into a dataset of ``n`` items, epoch by epoch.

    Each epoch is a fresh permutation from ``generator`` (sampling without replacement). Only
    full batches are returned: the last ``n % batch_size`` indices of each permutation are
    **dropped**, so every step sees exactly ``batch_size`` items (constant cost and gradient
    scale); as each epoch reshuffles, no item is systematically left out. ``batch_size > n``
    is clamped to ``n`` (one batch per epoch, the whole dataset).

    The permutation of an epoch is drawn lazily when its first batch is requested.
    :meth:`state_dict` captures the current permutation, position, epoch and the generator's
    state, so :meth:`load_state_dict` resumes the exact same sequence of batches. Restoring also
    sets the state of the generator passed in, so give the sampler a generator of its own.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        if n < 1:
            raise ValueError(f"RealBatchSampler needs n >= 1 items, got {n}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.n = int(n)
        self.batch_size = min(int(batch_size), self.n)
        self.generator = generator
        self._epoch = 0
        self._position = 0
        self._perm: Tensor | None = None

    @property
    def epoch(self) -> int:
        """Number of completed passes over the data."""
        return self._epoch

    @property
    def position(self) -> int:
        """Number of indices of the current epoch's permutation already drawn."""
        return self._position

    @property
    def batches_per_epoch(self) -> int:
        """Full batches per epoch, ``n // batch_size`` (the remainder is dropped)."""
        return self.n // self.batch_size

    def next_indices(self) -> tuple[Tensor, bool]:
        """Return the next batch of int64 indices and whether this batch ended an epoch."""
        if self._perm is None:
            self._perm = torch.randperm(
                self.n, generator=self.generator, device=self.generator.device
            )
        start = self._position
        idx = self._perm[start : start + self.batch_size]
        self._position = start + self.batch_size
        ended = self._position + self.batch_size > self.n
        if ended:
            self._epoch += 1
            self._position = 0
            self._perm = None
        return idx, ended

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: ints and CPU tensors (safe for ``torch.save``)."""
        perm = torch.empty(0, dtype=torch.int64) if self._perm is None else self._perm.cpu().clone()
        return {
            "n": self.n,
            "batch_size": self.batch_size,
            "epoch": self._epoch,
            "position": self._position,
            "perm": perm,
            "generator_state": self.generator.get_state().clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; ``n`` and ``batch_size`` must match this sampler."""
        n, bs = int(state["n"]), int(state["batch_size"])
        if n != self.n or bs != self.batch_size:
            raise ValueError(
                f"state is for n={n}, batch_size={bs} but this sampler has n={self.n}, "
                f"batch_size={self.batch_size}"
            )
        perm = torch.as_tensor(state["perm"], dtype=torch.int64)
        position = int(state["position"])
        if perm.numel() not in (0, self.n):
            raise ValueError(f"state perm has {perm.numel()} entries, expected 0 or {self.n}")
        if perm.numel() == 0 and position != 0:
            raise ValueError("state has a position inside an epoch but no permutation")
        if position < 0 or (perm.numel() > 0 and position + self.batch_size > self.n):
            raise ValueError(f"state position {position} is out of range for n={self.n}")
        self.generator.set_state(torch.as_tensor(state["generator_state"]).cpu())
        self._epoch = int(state["epoch"])
        self._position = position
        self._perm = perm.to(self.generator.device) if perm.numel() else None

    def __repr__(self) -> str:
        return (
            f"RealBatchSampler(n={self.n}, batch_size={self.batch_size}, epoch={self._epoch}, "
            f"position={self._position})"
        )
