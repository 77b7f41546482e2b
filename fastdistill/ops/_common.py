"""Small helpers shared by the op wrappers."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor


def below_autograd():
    """Skip the autograd dispatch layer for the ops called inside (nothing there may record a
    graph): a Python-registered autograd formula costs tens of microseconds per call even on
    tensors that need no gradient, and the engine's sweeps make thousands of such calls."""
    guard = getattr(torch._C, "_AutoDispatchBelowAutograd", None)
    return guard() if guard is not None else contextlib.nullcontext()


def device_of(t: object) -> torch.device:
    """The device of a tensor argument (CPU for anything else: the checks then report it)."""
    return t.device if isinstance(t, Tensor) else torch.device("cpu")


def as_raw_lr(raw_lr: Tensor | float, like: object) -> Tensor | object:
    """Step-size argument as a tensor with ``like``'s dtype and device (differentiably).
    Anything else is passed through for the op's input checks to report."""
    if not isinstance(like, Tensor):
        return raw_lr
    dtype = like.dtype if like.is_floating_point() else None
    if isinstance(raw_lr, Tensor):
        if (
            dtype is not None
            and raw_lr.is_floating_point()
            and (raw_lr.dtype != dtype or raw_lr.device != like.device)
        ):
            return raw_lr.to(device=like.device, dtype=dtype)
        return raw_lr
    if isinstance(raw_lr, (int, float)) and not isinstance(raw_lr, bool):
        return torch.tensor(float(raw_lr), dtype=dtype, device=like.device)
    return raw_lr


def rows_vmap(op, num_tensors: int):
    """vmap rule of a row-wise op whose first ``num_tensors`` arguments all have the rows as
    dim 0: the vmapped dim is folded into the rows (rows are independent)."""

    def rule(info, in_dims, *args):
        n = info.batch_size
        tensors = []
        for t, d in zip(args[:num_tensors], in_dims[:num_tensors], strict=True):
            tensors.append(t.movedim(d, 0) if d is not None else t.unsqueeze(0).expand(n, *t.shape))
        rows = tensors[0].shape[1]
        flat = [t.reshape(n * rows, *t.shape[2:]) for t in tensors]
        out = op(*flat, *args[num_tensors:])
        if isinstance(out, Tensor):
            return out.reshape(n, rows, *out.shape[1:]), 0
        return tuple(o.reshape(n, rows, *o.shape[1:]) for o in out), (0,) * len(out)

    return rule


def not_differentiable(message: str):
    """An autograd formula that raises ``message`` (ops whose outputs have no gradient)."""

    def backward(ctx, *grads):
        raise RuntimeError(message)

    return backward


def no_setup(ctx, inputs, output) -> None:
    """``setup_context`` of an op that saves nothing."""
