"""``fastdistill.ops.seq_step``: one fused inner step (or outer value-and-gradient) of a
sequential net, one C++ call instead of ~150 op calls (the adjoint engine's hot path)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fastdistill.ops import _backend, _library
from fastdistill.ops.reference.seq_step import seq_step as reference_seq_step

__all__ = ["seq_step"]

_NAME = "fastdistill::seq_step"


def seq_step(
    w: Tensor,
    v: Tensor | None,
    x: Tensor,
    y: Tensor,
    spec: Sequence[int],
    loss: str,
    need_dx: bool = False,
    need_dy: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(value [B], g [B, P], hv, dx, dy)`` of B nets with flat parameters ``w [B, P]`` on the
    shared batch ``x``, for the net described by ``spec`` (layer records, see
    :mod:`fastdistill.ops.reference.seq_step`).

    ``loss`` "soft", "softmax" or "binary" (inner losses, ``y`` the labels): ``g`` is the
    gradient of the sum over nets; with ``v`` given also ``hv = H_ww v`` and, when asked for,
    ``dx = (d2l/dx dw) v`` and ``dy = (d2l/dy dw) v`` summed over nets. ``loss`` "ce" or "bce"
    (outer losses, ``y`` the targets): ``g`` is the gradient of the mean over nets. Outputs not
    computed come back empty. A malformed ``spec`` or an input it does not fit raises
    ValueError. Not differentiable: call it on detached tensors.
    """
    spec = spec if isinstance(spec, list) else [int(s) for s in spec]
    if _backend.runs_kernel("seq_step", w.device):
        return torch.ops.fastdistill.seq_step.default(w, v, x, y, spec, loss, need_dx, need_dy)
    return reference_seq_step(w, v, x, y, spec, loss, need_dx, need_dy)


def _seq_step_fake(w, v, x, y, spec, loss, need_dx, need_dy):
    torch._check(w.dim() == 2, lambda: "fastdistill::seq_step: `w` must be [B, P]")
    empty = (0,)
    hvp = v is not None
    return (
        w.new_empty((w.shape[0],)),
        w.new_empty(w.shape),
        w.new_empty(w.shape if hvp else empty),
        x.new_empty(x.shape if hvp and need_dx else empty),
        y.new_empty(
            y.shape if hvp and need_dy and loss in ("soft", "softmax", "binary") else empty
        ),
    )


@_library.on_load
def _register() -> None:
    torch.library.register_fake(_NAME)(_seq_step_fake)
