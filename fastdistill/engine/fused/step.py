"""The fused inner step: entry points of the adjoint engine, and the choice of path per call.

Per call: the one-call C++ step (``fastdistill.ops.seq_step``) where the plan and the build allow
it, else the Python pass over the plan (:func:`~fastdistill.engine.fused.run.run_plan`), else
(a model or an input shape without a fused implementation) autograd, which is also the oracle of
the tests. ``describe(model)`` says which path a model takes and why. ``FASTDISTILL_FUSED=0`` or
``FASTDISTILL_BACKEND=reference`` (or ``set_fused(False)``) turn the fused path off.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import Tensor

from fastdistill import ops
from fastdistill.engine.functional import FlatModel
from fastdistill.engine.fused.autograd import (
    autograd_inner_grad,
    autograd_inner_hvp,
    autograd_outer_value_and_grad,
)
from fastdistill.engine.fused.layers import Unsupported
from fastdistill.engine.fused.losses import inner_loss_grads, outer_loss_grads
from fastdistill.engine.fused.plan import Plan, cached_plan
from fastdistill.engine.fused.run import run_plan
from fastdistill.engine.losses import LabelKind

__all__ = [
    "Tape",
    "describe",
    "fused_enabled",
    "inner_grad",
    "inner_grad_record",
    "inner_hvp",
    "inner_hvp_replay",
    "outer_value_and_grad",
    "set_fused",
    "uses_fused",
]

log = logging.getLogger("fastdistill.engine.fused")
_override: bool | None = None


def set_fused(enabled: bool | None) -> None:
    """Force the fused path on (True) or off (False); None: decide from the environment."""
    global _override
    _override = enabled


def fused_enabled() -> bool:
    """Whether the fused path may be used: off with ``FASTDISTILL_FUSED=0`` or
    ``FASTDISTILL_BACKEND=reference`` (the reference backend means plain autograd here)."""
    if _override is not None:
        return _override
    flag = os.environ.get("FASTDISTILL_FUSED", "").strip().lower()
    if flag in {"0", "false", "no", "off"}:
        return False
    return ops.get_backend() != "reference"


def describe(model: FlatModel) -> str:
    """Which path the adjoint engine takes for this model, and why."""
    got = cached_plan(model)
    if isinstance(got, str):
        return got
    if not fused_enabled():
        return f"autograd (fused path switched off): {got.summary()}"
    cpu = torch.device("cpu")
    kernels = ops.use_kernels(cpu, "conv_pool_forward")[0]
    if (
        got.spec is not None
        and ops.use_kernels(cpu, "seq_step")[0]
        and (kernels or not got.has_conv_pool)
    ):
        how = "one C++ call per step"
    elif got.has_conv_pool and not kernels:
        how = "Python, conv+pool blocks unfused (no conv_pool kernels)"
    else:
        how = "Python"
    return f"fused ({how}, on CPU): {got.summary()}"


def uses_fused(model: FlatModel, x: Tensor | None = None) -> bool:
    """Whether calls for this model (and input shape) take the fused path."""
    got = cached_plan(model)
    if isinstance(got, str) or not fused_enabled():
        return False
    return x is None or _shape_key(x) not in got.bad_shapes


def _shape_key(x: Tensor) -> tuple[Any, ...]:
    return (tuple(x.shape[1:]), x.dtype, x.device.type)


def _fused_call(model: FlatModel, w: Tensor, x: Tensor, fn):
    """Run ``fn(plan)`` on the fused path if this model and input allow it, else None."""
    got = cached_plan(model)
    if isinstance(got, str) or not fused_enabled():
        return None
    key = _shape_key(x)
    if key in got.bad_shapes:
        return None
    try:
        with torch.no_grad(), ops.below_autograd():
            return fn(got)
    except Unsupported as exc:
        got.bad_shapes.add(key)
        log.info("fastdistill fused inner step: autograd fallback for %r, input %s: %s",
                 model, key, exc)  # fmt: skip
        return None


_seq_enabled = True  # tests switch it off to exercise the Python implementation


def _seq(plan: Plan, w: Tensor, x: Tensor) -> bool:
    """Whether this call can run as one ``fastdistill::seq_step`` (C++) call."""
    if not _seq_enabled or plan.spec is None or w.dtype not in (torch.float32, torch.float64):
        return False
    if x.dtype != w.dtype:
        return False
    op = "conv_pool_forward" if plan.has_conv_pool else "seq_step"
    return ops.runs_kernel(op, w.device)


def _seq_step(plan, w, v, x, y, loss, need_dx, need_dy):
    try:
        return ops.seq_step(w, v, x, y, plan.spec, loss, need_dx, need_dy)
    except ValueError as exc:  # shape checks of the C++ step: this input is not supported
        raise Unsupported(str(exc).splitlines()[0]) from exc


Tape = list[Tensor]  # what one step's gradient call kept for its Hessian-vector call


# -- public entry points ----------------------------------------------------------------------
def inner_grad(model: FlatModel, w: Tensor, x: Tensor, y: Tensor, kind: LabelKind) -> Tensor:
    """``grad_w`` of the summed inner losses of B nets, ``[B, P]`` (detached)."""

    def fused(plan: Plan) -> Tensor:
        if _seq(plan, w, x):
            return _seq_step(plan, w.detach(), None, x, y, kind, False, False)[1]
        loss = lambda z, zd: inner_loss_grads(z, y, kind, None, False)
        return run_plan(plan, w.detach(), x, loss=loss)[1]

    out = _fused_call(model, w, x, fused)
    return out if out is not None else autograd_inner_grad(model, w, x, y, kind)


def inner_grad_record(
    model: FlatModel, w: Tensor, x: Tensor, y: Tensor, kind: LabelKind
) -> tuple[Tensor, Tape | None]:
    """:func:`inner_grad` and, on the one-call C++ path, the tape that
    :func:`inner_hvp_replay` of the same step (same ``w``, ``x``, ``y``) turns into its products
    without redoing the primal pass; None elsewhere."""

    def fused(plan: Plan) -> tuple[Tensor, Tape | None]:
        if _seq(plan, w, x):
            try:
                _, g, tape = ops.seq_step_record(w.detach(), x, y, plan.spec, kind)
            except ValueError as exc:  # as in _seq_step: this input is not supported
                raise Unsupported(str(exc).splitlines()[0]) from exc
            return g, tape
        loss = lambda z, zd: inner_loss_grads(z, y, kind, None, False)
        return run_plan(plan, w.detach(), x, loss=loss)[1], None

    out = _fused_call(model, w, x, fused)
    return out if out is not None else (autograd_inner_grad(model, w, x, y, kind), None)


def inner_hvp_replay(
    model: FlatModel,
    w: Tensor,
    x: Tensor,
    y: Tensor,
    kind: LabelKind,
    v: Tensor,
    learn_labels: bool,
    tape: Tape,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """``(H_ww v, (d2l/dx dw) v, (d2l/dy dw) v or None, <g, v>)`` of :func:`inner_hvp` from
    the tape :func:`inner_grad_record` returned for this step: the same products, bit for bit,
    without the primal forward and backward, and the 0-d ``<g, v>`` summed over nets (to
    rounding; read off the logits, so the step's gradient need not be kept)."""
    plan = cached_plan(model)
    if isinstance(plan, str) or plan.spec is None:
        raise RuntimeError(f"a tape was recorded for {model!r}, which has no one-call C++ step")
    with torch.no_grad(), ops.below_autograd():
        hv, dx, dy, gv = ops.seq_step_replay(
            w.detach(), v.detach(), x, y, plan.spec, kind, tape, True, learn_labels
        )
    return hv, dx, (dy if learn_labels else None), gv


def inner_hvp(
    model: FlatModel,
    w: Tensor,
    x: Tensor,
    y: Tensor,
    kind: LabelKind,
    v: Tensor,
    learn_labels: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Gradient and Hessian-vector products of one inner step, for the adjoint sweep.

    Returns ``(g, H_ww v, (d2l/dx dw) v, (d2l/dy dw) v or None)`` where ``l`` is the sum over
    nets of the inner losses, ``g = grad_w l`` ``[B, P]`` and ``v`` is ``[B, P]``; the data
    and label products are summed over nets (the distilled batch is shared).
    """

    def fused(plan: Plan):
        if _seq(plan, w, x):
            _, g, hv, dx, dy = _seq_step(
                plan, w.detach(), v.detach(), x, y, kind, True, learn_labels
            )
            return g, hv, dx, (dy if learn_labels else None)
        loss = lambda z, zd: inner_loss_grads(z, y, kind, zd, learn_labels)
        _, g, hv, dx, dy = run_plan(plan, w.detach(), x, v=v.detach(), loss=loss, need_dx=True)
        return g, hv, dx, dy

    out = _fused_call(model, w, x, fused)
    return out if out is not None else autograd_inner_hvp(model, w, x, y, kind, v, learn_labels)


def outer_value_and_grad(
    model: FlatModel, w: Tensor, x: Tensor, y: Tensor, binary: bool
) -> tuple[Tensor, Tensor]:
    """Per-net outer loss ``[B]`` on the real batch and the gradient of its mean over nets
    w.r.t. ``w`` ``[B, P]`` (both detached)."""

    def fused(plan: Plan):
        if _seq(plan, w, x):
            value, g, _, _, _ = _seq_step(
                plan, w.detach(), None, x, y, "bce" if binary else "ce", False, False
            )
            return value, g
        loss = lambda z, zd: outer_loss_grads(z, y, binary)
        value, g, _, _, _ = run_plan(plan, w.detach(), x, loss=loss)
        return value, g

    out = _fused_call(model, w, x, fused)
    return out if out is not None else autograd_outer_value_and_grad(model, w, x, y, binary)
