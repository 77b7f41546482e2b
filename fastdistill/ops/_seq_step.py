"""``fastdistill.ops.seq_step``: one fused inner step (or outer value-and-gradient) of a
sequential net, one C++ call instead of ~150 op calls (the adjoint engine's hot path).

``seq_step_record`` / ``seq_step_replay`` split an inner step between the adjoint's two sweeps:
the forward sweep's gradient call keeps the primal values (activations, pooling codes,
cotangents) on a tape, and the reverse sweep's Hessian-vector call of the same step replays
them, computing only the tangent streams (about a third less arithmetic). The numbers are those
of ``seq_step`` bit for bit."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fastdistill.ops import _backend, _library
from fastdistill.ops.reference.seq_step import parse_spec
from fastdistill.ops.reference.seq_step import seq_step as reference_seq_step

__all__ = ["seq_step", "seq_step_record", "seq_step_replay"]

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


def seq_step_record(
    w: Tensor, x: Tensor, y: Tensor, spec: Sequence[int], loss: str
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """``(value [B], g [B, P], tape)``: ``seq_step`` without ``v`` (an inner ``loss``), plus the
    tape that :func:`seq_step_replay` of the same ``(w, x, y)`` needs. The tape is the C++
    step's own record (an empty list where the step runs on the reference): hand it back
    unchanged; it holds a few activations of the distilled batch per layer."""
    spec = spec if isinstance(spec, list) else [int(s) for s in spec]
    if _backend.runs_kernel("seq_step_record", w.device):
        value, g, tape = torch.ops.fastdistill.seq_step_record.default(w, x, y, spec, loss)
        return value, g, list(tape)
    value, g, _, _, _ = reference_seq_step(w, None, x, y, spec, loss, False, False)
    return value, g, []


def seq_step_replay(
    w: Tensor,
    v: Tensor,
    x: Tensor,
    y: Tensor,
    spec: Sequence[int],
    loss: str,
    tape: Sequence[Tensor],
    need_dx: bool = False,
    need_dy: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(hv, dx, dy, gv)``: ``hv, dx, dy`` of ``seq_step(w, v, ...)`` (bit for bit) from the
    tape :func:`seq_step_record` returned for the same ``(w, x, y)``, computing only the
    tangent streams, and the 0-d ``gv = sum(g * v)`` (to rounding), the derivative of the loss
    along ``v`` read off the logits, so that callers need not keep ``g`` for it. An empty tape
    (recorded on the reference) means the whole step is computed. A tape that does not fit
    raises ValueError."""
    spec = spec if isinstance(spec, list) else [int(s) for s in spec]
    tape = list(tape)
    if tape and _backend.runs_kernel("seq_step_replay", w.device):
        return tuple(  # type: ignore[return-value]
            torch.ops.fastdistill.seq_step_replay.default(
                w, v, x, y, spec, loss, tape, need_dx, need_dy
            )
        )
    _, g, hv, dx, dy = seq_step(w, v, x, y, spec, loss, need_dx, need_dy)
    return hv, dx, dy, (g * v).sum()


def _tape_fake(w: Tensor, x: Tensor, spec: list[int]) -> list[Tensor]:
    """The tape's entries as the C++ step records them: per layer (output, codes, cotangent)."""
    layers = parse_spec(spec, w.shape[1])
    first = next(i for i, layer in enumerate(layers) if layer.w_off >= 0)
    B = w.shape[0]
    shape, layout = tuple(x.shape), "shared"
    tape: list[Tensor] = []
    for i, layer in enumerate(layers):
        if layer.kind == 1:  # conv + pool
            cout, _, kh, kw = layer.shape
            ph, pw = layer.padding
            hp, wp = (shape[2] + 2 * ph - kh + 1) // 2, (shape[3] + 2 * pw - kw + 1) // 2
            shape, layout = (shape[0], B * cout, hp, wp), "grouped"
        elif layer.kind == 2:  # flatten
            if layout == "shared":
                shape = (shape[0], math.prod(shape[1:]))
            elif layout == "grouped":
                shape, layout = (B, shape[0], math.prod(shape[1:]) // B), "dense"
        elif layer.kind == 3:  # linear
            rows = shape[0] if layout == "shared" else shape[1]
            shape, layout = (B, rows, layer.shape[0]), "dense"
        empty = w.new_empty((0,))
        if i < first or layer.kind == 2:
            tape += [empty, empty, empty]
            continue
        code = w.new_empty(shape, dtype=torch.uint8) if layer.kind == 1 else empty
        d = w.new_empty(shape) if layer.kind in (1, 3, 5) else empty
        tape += [w.new_empty(shape), code, d]
    return tape


def _record_fake(w, x, y, spec, loss):
    torch._check(w.dim() == 2, lambda: "fastdistill::seq_step_record: `w` must be [B, P]")
    return w.new_empty((w.shape[0],)), w.new_empty(w.shape), _tape_fake(w, x, list(spec))


def _replay_fake(w, v, x, y, spec, loss, tape, need_dx, need_dy):
    torch._check(w.dim() == 2, lambda: "fastdistill::seq_step_replay: `w` must be [B, P]")
    empty = (0,)
    return (
        w.new_empty(w.shape),
        x.new_empty(x.shape if need_dx else empty),
        y.new_empty(y.shape if need_dy else empty),
        w.new_empty(()),
    )


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
    torch.library.register_fake("fastdistill::seq_step_record")(_record_fake)
    torch.library.register_fake("fastdistill::seq_step_replay")(_replay_fake)
