"""Reuse a distilled set outside fastdistill: a ``torch.utils.data.Dataset`` and ``train_on``.

:class:`DistilledDataset` yields ``(data, soft_label, step)`` per distilled example, in step
order (the ``[S, N, ...]`` layout flattened step by step), so any DataLoader can read it.
:func:`train_on` trains a user's own ``nn.Module`` on the set exactly as evaluation does
(:func:`fastdistill.evaluate.train_on_distilled`: ``T`` plain GD steps with the learned data,
labels and step sizes), so another architecture is evaluated in a few lines::

    from fastdistill import train_on
    net = train_on("runs/digits/distilled.safetensors", MyNet(), generator=torch.Generator())
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from fastdistill.distilled import DistilledSet
from fastdistill.engine.functional import FlatModel
from fastdistill.engine.init import sample_weights
from fastdistill.evaluate import train_on_distilled


def as_distilled(distilled: DistilledSet | str | Path) -> DistilledSet:
    """A :class:`DistilledSet` from itself, a ``.safetensors`` file or a ``fastdistill
    distill`` output folder (which holds ``distilled.safetensors``)."""
    if isinstance(distilled, DistilledSet):
        return distilled
    path = Path(distilled)
    if path.is_dir():
        path = path / "distilled.safetensors"
    return DistilledSet.load(path)


class DistilledDataset(Dataset):
    """The examples of a distilled set, ``S * N`` of them, in step order.

    Item ``k`` is ``(data[s, i], labels[s, i], s)`` with ``s, i = divmod(k, N)``: the input,
    its (soft) label row (a scalar for binary sets) and the distilled step it belongs to.
    ``lrs`` holds the learned step sizes (``T = S * epochs`` of them; inner step ``t`` uses
    step ``t mod S``).
    """

    def __init__(self, distilled: DistilledSet | str | Path) -> None:
        self.distilled = as_distilled(distilled)
        d = self.distilled
        self._data = d.data.detach()
        self._labels = d.labels.detach()
        self.steps = d.steps
        self.per_step = d.data.shape[1]

    def __len__(self) -> int:
        return self.steps * self.per_step

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for {n} distilled examples")
        s, i = divmod(index % n, self.per_step)
        return self._data[s, i], self._labels[s, i], s

    @property
    def lrs(self) -> Tensor:
        """The learned step sizes ``[T]``."""
        return self.distilled.lrs

    @property
    def epochs(self) -> int:
        return self.distilled.epochs


def _first_epochs(d: DistilledSet, epochs: int | None) -> DistilledSet:
    """``d`` replayed for only its first ``epochs`` epochs (their learned step sizes)."""
    if epochs is None or epochs == d.epochs:
        return d
    if not 1 <= epochs <= d.epochs:
        raise ValueError(
            f"epochs must be in [1, {d.epochs}] (the set learned step sizes for {d.epochs} "
            f"epochs), got {epochs}"
        )
    return DistilledSet(
        d.data,
        d.labels,
        d.raw_lrs[: d.steps * epochs],
        d.classes,
        epochs,
        d.label_kind,
        d.learn_labels,
        d.init_weights,
        dict(d.meta),
    )


def train_on(
    distilled: DistilledSet | str | Path,
    model: nn.Module,
    *,
    epochs: int | None = None,
    generator: torch.Generator | None = None,
    init_weights: Tensor | None = None,
) -> nn.Module:
    """Train ``model`` on a distilled set the way evaluation does; returns ``model``, trained.

    ``T`` plain gradient steps (:func:`fastdistill.evaluate.train_on_distilled`): step ``t``
    uses distilled batch ``t mod S``, its labels and the learned step size ``lrs[t]``.
    Without ``generator`` training starts from the module's current parameters; with one,
    from fresh weights drawn like ``evaluate_distilled(init="random")`` draws them (the set's
    init scheme, xavier by default), so the same seed gives the same net and accuracy.
    ``init_weights`` (``[P]``, e.g. ``set.init_weights`` of a fixed-init set, which only works
    from the net it was distilled for) starts from those weights instead.
    ``epochs`` replays only the first epochs (default: all the set's). The set is moved to the
    module's device and dtype; the trained weights are written into ``model``'s parameters.
    """
    params = list(model.parameters())
    if not params:
        raise ValueError(f"{type(model).__name__} has no parameters to train")
    device, dtype = params[0].device, params[0].dtype
    d = _first_epochs(as_distilled(distilled), epochs)
    if d.data.device != device or d.data.dtype != dtype:
        d = d.to(device, dtype)
    flat = FlatModel(model)
    if init_weights is not None and generator is not None:
        raise ValueError("train_on: pass init_weights or generator, not both")
    if init_weights is not None:
        if init_weights.numel() != flat.num_params:
            raise ValueError(
                f"init_weights has {init_weights.numel()} values but {type(model).__name__} "
                f"has {flat.num_params} parameters (a fixed-init set's weights fit only the "
                "architecture it was distilled with)"
            )
        w0 = init_weights.detach().reshape(1, -1).to(device, dtype)
    elif generator is None:
        w0 = flat.flatten_module().to(dtype).unsqueeze(0)
    else:
        init = d.meta.get("init") or {}
        w0 = sample_weights(
            flat,
            1,
            scheme=init.get("scheme", "xavier"),
            gain=float(init.get("gain", 1.0)),
            generator=generator,
            dtype=dtype,
        ).to(device)
    w = train_on_distilled(flat, w0, d)
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(w[0].to(dtype), params)
    return model
