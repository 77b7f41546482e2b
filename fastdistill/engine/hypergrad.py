"""Exact hypergradients of the outer loss w.r.t. distilled data, labels and step sizes.

Two engines compute the same numbers (to float64 precision):

* ``unroll`` — the oracle: one differentiable graph through all ``T`` inner steps, any model.
  Memory grows linearly with ``T``.
* ``adjoint`` — the product: a forward unroll without a graph that keeps only weight
  checkpoints, then a reverse sweep that recomputes one step at a time and applies its
  Hessian-vector products (docs/algorithm.md §3)::

      dL/dw_t  = v - lr_t * H_ww v        dL/dx_t = -lr_t * (d2l/dx dw) v
      dL/dy_t  = -lr_t * (d2l/dy dw) v    dL/dlr_t = -<grad_w l, v>

  Graph memory is that of one inner step whatever ``T`` is. Which weights are stored and which
  recomputed is a checkpoint schedule (``fastdistill.engine.checkpointing``): by default every
  ``w_t`` is stored when the ``T`` vectors fit in ``checkpoint_memory`` (256 MiB: always, for
  the paper's models), so nothing is recomputed; otherwise as many as fit, placed by binomial
  checkpointing (recomputation grows like ``T^(1/slots)``). Where nothing is recomputed, each
  forward step also keeps a replay tape (what the reverse call of that step needs from its
  primal pass) in the memory the weights leave free, so the reverse sweep computes only the
  tangent streams. ``checkpoint_slots`` fixes the slot
  count instead (at most ``checkpoint_outer_slots`` of them filled during the real-batch outer
  pass), ``checkpoint_every=k`` stores every k-th vector (``~T/k + k`` vectors).

Everything is batched over B nets (``w0`` is ``[B, P]``); the result is the mean over nets.
Step ``t`` uses distilled batch ``t mod S`` (S = ``data.shape[0]``), so data and label gradients
add up over epochs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fastdistill import ops
from fastdistill.engine import fused
from fastdistill.engine.checkpointing import (
    DEFAULT_CHECKPOINT_MEMORY,
    DEFAULT_OUTER_SLOTS,
    Action,
    binomial_schedule,
    uniform_schedule,
)
from fastdistill.engine.functional import FlatModel
from fastdistill.engine.losses import LabelKind, inner_loss, outer_loss

Engine = Literal["adjoint", "unroll"]
AUTOGRAD_OUTER_CHUNK = 128
ENGINES: tuple[str, ...] = ("adjoint", "unroll")


@dataclass
class Hypergradient:
    """Result of one hypergradient evaluation (all tensors detached)."""

    outer_loss: Tensor  # [B], each net's loss on the real batch after T steps
    grad_data: Tensor  # like data [S, N, ...]
    grad_labels: Tensor | None  # like labels, None when labels are frozen
    grad_raw_lrs: Tensor  # [T]
    final_weights: Tensor  # [B, P], w_T of every net


def hypergradient(
    model: FlatModel,
    w0: Tensor,
    data: Tensor,
    labels: Tensor,
    raw_lrs: Tensor,
    real_x: Tensor,
    real_y: Tensor,
    *,
    label_kind: LabelKind = "soft",
    learn_labels: bool = True,
    engine: Engine = "adjoint",
    checkpoint_every: int | None = None,
    checkpoint_slots: int | None = None,
    outer_chunk: int | None = None,
    checkpoint_outer_slots: int | None = None,
    checkpoint_memory: int | None = None,
    truncate: int | None = None,
    rng_seed: int | None = None,
    outer_pass: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
) -> Hypergradient:
    """d(mean over nets of the outer loss) / d(data, labels, raw_lrs), exactly.

    Args:
        model: the network and its flat-parameter layout.
        w0: ``[B, P]`` initial weights of the B nets.
        data: ``[S, N, ...]`` distilled inputs of each distilled step.
        labels: ``[S, N, K]`` label rows (``[S, N]`` for binary tasks).
        raw_lrs: ``[T]`` raw step sizes; step ``t`` uses ``softplus(raw_lrs[t])``.
        real_x, real_y: the real batch of the outer loss.
        label_kind: ``soft``, ``softmax`` or ``binary`` (see ``inner_loss``).
        learn_labels: compute label gradients (False for frozen, hard labels).
        engine: ``adjoint`` (memory of one step) or ``unroll`` (the oracle).
        checkpoint_every: adjoint only; store every k-th weight vector (1 = all) and recompute
            one segment at a time: ``~T/k + k`` stored vectors, at most 2x the forward steps.
        checkpoint_slots: adjoint only; binomial checkpointing storing at most this many weight
            vectors (``[B, P]`` each) whatever ``T`` is, with the fewest recomputed steps for
            that memory; more slots recompute less. Give one of the two, not both.
        checkpoint_outer_slots: binomial schedule; at most this many of the slots are filled
            while the outer loss runs on the real batch, usually the largest activations of the
            computation (default ``DEFAULT_OUTER_SLOTS``; ``checkpoint_slots`` = plain revolve,
            fewer recomputed steps).
        checkpoint_memory: adjoint only, when neither of the above is given: bytes the stored
            weight vectors may take (default ``DEFAULT_CHECKPOINT_MEMORY``, 256 MiB). Every
            ``w_t`` is stored when they fit (``T`` forward steps, no recomputation: LeNet at
            T=30 needs 7.4 MB), else as many as fit, in a binomial schedule. What is left holds
            replay tapes (LeNet on ten images: ~2/3 of a weight vector per step); a budget of
            the ``T + 1`` weight vectors alone turns them off.
        outer_chunk: adjoint only; run the real-batch outer pass (loss and gradient at
            ``w_T``) over chunks of at most this many examples and add them up, so its
            activations, the peak of the call for large real batches or long texts, shrink by
            ``len(real_x) / outer_chunk``; the result equals the unchunked one up to rounding.
            Default: unchunked on the fused path, ``AUTOGRAD_OUTER_CHUNK`` (128) on the
            autograd path, whose full-batch activations (hundreds of MB for AlexCifarNet or
            IMDB sentences) make it memory-bound: 1.5-2x faster in chunks on a 2-core CPU.
            ``unroll`` keeps its whole graph and ignores it.
        truncate: back-propagate through the last ``truncate`` steps only (None = exact).
        rng_seed: base seed that makes stochastic layers (dropout) replay the same masks in
            every engine and in the adjoint's recomputation; drawn when None.
        outer_pass: adjoint only; ``w_T -> (per-net loss [B], dL/dw_T [B, P])`` replacing the
            real-batch outer pass (``real_x``/``real_y`` are then only checked), e.g. one
            shared by ranks (``fastdistill.distributed.ordered_outer``).
    """
    _check_inputs(model, w0, data, labels, raw_lrs, real_x, real_y, label_kind)
    ops.keep_freed_memory()  # once per process: no page faults re-paid every iteration
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    vector_bytes = w0.shape[0] * w0.shape[1] * w0.element_size()
    schedule = _checkpoint_schedule(
        checkpoint_every, checkpoint_slots, checkpoint_outer_slots, checkpoint_memory, vector_bytes
    )
    if outer_chunk is not None and int(outer_chunk) < 1:
        raise ValueError(f"outer_chunk must be >= 1, got {outer_chunk}")
    if outer_chunk is None and not fused.uses_fused(model, real_x):
        outer_chunk = AUTOGRAD_OUTER_CHUNK
    if not model.stochastic:
        rng_seed = None  # nothing draws random numbers: no generator to fork per step
    elif rng_seed is None:
        rng_seed = int(torch.randint(0, 2**62, (1,)).item())
    if engine == "unroll":
        if outer_pass is not None:
            raise ValueError("outer_pass needs engine='adjoint' (unroll keeps one graph)")
        return _unroll(
            model, w0, data, labels, raw_lrs, real_x, real_y, label_kind, learn_labels,
            schedule, truncate, rng_seed,
        )  # fmt: skip
    memory = DEFAULT_CHECKPOINT_MEMORY if checkpoint_memory is None else int(checkpoint_memory)
    tape_memory = max(0, memory - (raw_lrs.numel() + 1) * vector_bytes)
    return _adjoint(
        model, w0, data, labels, raw_lrs, real_x, real_y, label_kind, learn_labels,
        schedule, truncate, rng_seed, outer_chunk, outer_pass, tape_memory,
    )  # fmt: skip


# -- shared pieces ----------------------------------------------------------------------------
def _check_inputs(
    model: FlatModel,
    w0: Tensor,
    data: Tensor,
    labels: Tensor,
    raw_lrs: Tensor,
    real_x: Tensor,
    real_y: Tensor,
    label_kind: str,
) -> None:
    if w0.dim() != 2 or w0.shape[1] != model.num_params:
        raise ValueError(f"w0 must be [B, {model.num_params}], got {tuple(w0.shape)}")
    if raw_lrs.dim() != 1 or raw_lrs.numel() == 0:
        raise ValueError(f"raw_lrs must be a non-empty 1-d tensor [T], got {tuple(raw_lrs.shape)}")
    if data.shape[:2] != labels.shape[:2]:
        raise ValueError(
            f"data {tuple(data.shape)} and labels {tuple(labels.shape)} disagree on [S, N]"
        )
    if (label_kind == "binary") != (labels.dim() == 2):
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not fit label_kind={label_kind!r} "
            "(binary tasks take one scalar label per example: [S, N])"
        )
    if real_x.shape[0] != real_y.shape[0]:
        raise ValueError(f"real batch sizes differ: x {real_x.shape[0]} vs y {real_y.shape[0]}")
    tensors = {"w0": w0, "data": data, "labels": labels, "raw_lrs": raw_lrs, "real_x": real_x}
    devices = {n: t.device for n, t in tensors.items()} | {"real_y": real_y.device}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {devices}")
    dtypes = {n: t.dtype for n, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        raise ValueError(f"all floating tensors must share one dtype, got {dtypes}")


@contextmanager
def _step_rng(seed: int | None, t: int, device: torch.device) -> Iterator[None]:
    """Deterministic randomness for inner step t, so recomputation replays dropout masks.

    Forks only the generator of ``device`` (``torch.random.fork_rng`` and ``torch.manual_seed``
    touch every backend's, and queue lazy CUDA calls with a captured stack each time on a CUDA
    build without a GPU: milliseconds per outer iteration)."""
    if seed is None:
        yield
        return
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        gen = torch.cuda.default_generators[index]
    else:
        gen = torch.default_generator
    state = gen.get_state()
    gen.manual_seed((seed + 1_000_003 * (t + 1)) % (2**63))
    try:
        yield
    finally:
        gen.set_state(state)


def _inner_grad(
    model: FlatModel, w: Tensor, x: Tensor, y: Tensor, kind: LabelKind, create_graph: bool
) -> Tensor:
    loss = inner_loss(model.forward(w, x, train=True), y, kind).sum()
    (g,) = torch.autograd.grad(loss, w, create_graph=create_graph)
    return g


def _outer(model: FlatModel, w: Tensor, x: Tensor, y: Tensor, binary: bool) -> Tensor:
    return outer_loss(model.forward(w, x, train=False), y, binary)


def _first_step(truncate: int | None, T: int) -> int:
    if truncate is None:
        return 0
    if truncate < 1:
        raise ValueError(f"truncate must be >= 1, got {truncate}")
    return max(0, T - truncate)


# -- unroll: the oracle -----------------------------------------------------------------------
def _unroll(
    model, w0, data, labels, raw_lrs, real_x, real_y, kind, learn_labels, _ckpt, truncate, seed
) -> Hypergradient:
    T, S = raw_lrs.numel(), data.shape[0]
    first = _first_step(truncate, T)
    with torch.enable_grad():
        x_all = data.detach().requires_grad_()
        y_all = labels.detach().requires_grad_(learn_labels)
        raw = raw_lrs.detach().requires_grad_()
        lrs = F.softplus(raw)
        w = w0.detach().requires_grad_()
        for t in range(T):
            s = t % S
            if t == first:
                w = w.detach().requires_grad_()
            with _step_rng(seed, t, w.device):
                g = _inner_grad(model, w, x_all[s], y_all[s], kind, create_graph=t >= first)
            w = w - lrs[t] * g
        per_net = _outer(model, w, real_x, real_y, kind == "binary")
        inputs = [x_all, raw] + ([y_all] if learn_labels else [])
        grads = torch.autograd.grad(per_net.mean(), inputs, allow_unused=True)
    grads = [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, grads)]
    return Hypergradient(
        outer_loss=per_net.detach(),
        grad_data=grads[0],
        grad_labels=grads[2] if learn_labels else None,
        grad_raw_lrs=grads[1],
        final_weights=w.detach(),
    )


# -- adjoint: forward without graph, reverse sweep one step at a time -------------------------
Schedule = Callable[[int, int], Iterator[Action]]  # (steps n, first step) -> actions


def default_checkpoint_every(T: int) -> int:
    """The uniform schedule's classic choice: every vector up to T=16, ~sqrt(T) beyond."""
    return 1 if T <= 16 else math.ceil(math.sqrt(T))


def _checkpoint_schedule(
    every: int | None,
    slots: int | None,
    outer: int | None,
    memory: int | None = None,
    vector_bytes: int = 1,
) -> Schedule:
    """The schedule the options ask for (validated here, so both engines reject bad ones)."""
    if every is not None and (slots is not None or outer is not None or memory is not None):
        raise ValueError(
            "give one of checkpoint_every, checkpoint_slots or checkpoint_memory, not both"
        )
    if memory is not None and slots is not None:
        raise ValueError(
            "give one of checkpoint_every, checkpoint_slots or checkpoint_memory, not both"
        )
    if every is not None:
        if int(every) < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {every}")
        return lambda n, start: uniform_schedule(n, int(every), start)
    if slots is None:
        memory = DEFAULT_CHECKPOINT_MEMORY if memory is None else int(memory)
        if memory < 0:
            raise ValueError(f"checkpoint_memory must be >= 0 bytes, got {memory}")
        fit = max(1, memory // max(1, vector_bytes))
        budget_outer = outer

        def by_memory(n: int, start: int) -> Iterator[Action]:
            # n - 1 slots hold every w_t (w_start is the caller's): plain forward, no recompute.
            k = min(fit, n - 1)
            o = k if budget_outer is None else min(int(budget_outer), k)
            return binomial_schedule(n, k, start, o)

        if outer is not None and int(outer) < 0:
            raise ValueError(f"checkpoint_outer_slots must be >= 0, got {outer}")
        return by_memory
    slots = int(slots)
    outer = min(DEFAULT_OUTER_SLOTS, slots) if outer is None else int(outer)
    if slots < 0 or outer < 0:
        raise ValueError(f"checkpoint_slots/_outer_slots must be >= 0, got {slots}, {outer}")
    return lambda n, start: binomial_schedule(n, slots, start, outer)


def chunked_outer_value_and_grad(
    model: FlatModel, w: Tensor, x: Tensor, y: Tensor, binary: bool, chunk: int | None
) -> tuple[Tensor, Tensor]:
    """``fused.outer_value_and_grad`` over chunks of the real batch: per-net losses and
    gradients weighted by chunk size, so the sum is the full batch's mean."""
    n = x.shape[0]
    if chunk is None or chunk >= n:
        return fused.outer_value_and_grad(model, w, x, y, binary)
    value = grad = None
    for start in range(0, n, chunk):
        xs, ys = x[start : start + chunk], y[start : start + chunk]
        v, g = fused.outer_value_and_grad(model, w, xs, ys, binary)
        share = xs.shape[0] / n
        value = v * share if value is None else value.add_(v, alpha=share)
        grad = g * share if grad is None else grad.add_(g, alpha=share)
    return value, grad


class _Tapes:
    """Replay tapes of the forward sweep's steps (``fused.inner_grad_record``), kept within a
    byte budget: with one, the reverse sweep's Hessian-vector call of a step skips its primal
    pass (same products bit for bit, about a third less work). Only where no step is
    recomputed (each tape is then made once and used once); recording stops for good once the
    next tape would not fit."""

    def __init__(self, on: bool, budget: int) -> None:
        self.on, self.left = on, budget
        self.kept: dict[int, fused.Tape] = {}
        self.size: int | None = None  # every step's tape has the same entries (one data shape)

    def grad(self, model: FlatModel, t: int, w: Tensor, x: Tensor, y: Tensor, kind) -> Tensor:
        with torch.enable_grad():  # for the autograd fallback
            g, tape = fused.inner_grad_record(model, w, x, y, kind)
        if tape is not None and self.size is None:
            self.size = sum(e.nbytes for e in tape)
        size = self.size or 0
        if tape is None or size > self.left:
            self.on = False
        else:
            self.kept[t] = tape
            self.left -= size
        return g


def _reverse_step(tape, model, t, w, x, y, kind, v, learn_labels, raw_t, seed):
    """``(dL/dw_t, dL/dlr_t, (d2l/dx dw) v, (d2l/dy dw) v or None)`` of step t: replayed from
    its tape (``v - lr * H v`` as ``adjoint_update`` computes it, and ``-<g, v>``), else the
    whole step (fused pass, or double backward)."""
    if tape is not None:
        hv, dx, dy, gv = fused.inner_hvp_replay(model, w, x, y, kind, v, learn_labels, tape)
        with ops.below_autograd():
            return ops.inner_update(v, hv, raw_t), -gv, dx, dy
    with torch.enable_grad(), _step_rng(seed, t, w.device):
        g, hv, dx, dy = fused.inner_hvp(model, w, x, y, kind, v, learn_labels)
    with ops.below_autograd():
        v_new, dlr = ops.adjoint_update(v, hv, g.detach(), raw_t)
    return v_new, dlr, dx, dy


def _adjoint(
    model, w0, data, labels, raw_lrs, real_x, real_y, kind, learn_labels, schedule, truncate, seed,
    outer_chunk=None, outer_pass=None, tape_memory=0,
) -> Hypergradient:  # fmt: skip
    T, S = raw_lrs.numel(), data.shape[0]
    first = _first_step(truncate, T)
    data, labels, raw = data.detach(), labels.detach(), raw_lrs.detach()
    lrs = F.softplus(raw)
    actions = list(schedule(T - first + 1, first))
    recompute = sum(1 for a, _ in actions if a == "advance") > T - first
    tapes = _Tapes(not recompute and not model.stochastic, tape_memory)

    def step(t: int, w: Tensor) -> Tensor:
        s = t % S
        if tapes.on and t >= first:
            g = tapes.grad(model, t, w, data[s], labels[s], kind)
        else:
            with torch.enable_grad(), _step_rng(seed, t, w.device):
                g = fused.inner_grad(model, w, data[s], labels[s], kind)  # autograd fallback
        with ops.below_autograd():  # detached: no graph, no autograd layer
            return ops.inner_update(w.detach(), g.detach(), raw[t])

    def outer(w_T: Tensor) -> tuple[Tensor, Tensor]:
        if outer_pass is not None:
            return outer_pass(w_T)
        return chunked_outer_value_and_grad(
            model, w_T, real_x, real_y, kind == "binary", outer_chunk
        )

    grad_data = torch.zeros_like(data)
    grad_labels = torch.zeros_like(labels) if learn_labels else None
    grad_raw = torch.zeros_like(raw)

    def back(t: int, w: Tensor, v: Tensor) -> Tensor:
        """Adjoint of step t: accumulate its data/label/step-size gradients, return dL/dw_t."""
        s = t % S
        tape = tapes.kept.pop(t, None)
        v, dlr, dx, dy = _reverse_step(
            tape, model, t, w, data[s], labels[s], kind, v, learn_labels, raw[t], seed
        )
        grad_raw[t] = dlr * torch.sigmoid(raw[t])
        grad_data[s].sub_(lrs[t] * dx)  # tensor lr: no host sync on GPU
        if grad_labels is not None:
            grad_labels[s].sub_(lrs[t] * dy)
        return v

    # Steps before the truncation point only move the weights. Then the schedule runs steps
    # first .. T, where "step" T is the outer loss at w_T: it is reversed first and the forward
    # sweep is part of the schedule. Stored tensors are never modified in place (step() and
    # back() detach before setting requires_grad), so a restore is a reference, not a copy.
    w = w0.detach()
    for t in range(first):
        w = step(t, w.detach())
    start, current, t_cur = w, w, first
    stored: dict[int, Tensor] = {}
    v = w_final = per_net = None
    for action, t in actions:
        if action in ("advance", "store", "reverse") and t != t_cur:
            raise RuntimeError(f"checkpoint schedule: {action} {t} with w_{t_cur} current")
        if action == "advance":
            current, t_cur = step(t, current.detach()), t + 1
        elif action == "store":
            stored[t] = current
        elif action == "restore":
            current, t_cur = (start if t == first else stored[t]), t
        elif action == "free":
            del stored[t]
        elif t == T:
            per_net, v = outer(current)
            w_final = current
        else:
            v = back(t, current, v)
    return Hypergradient(
        outer_loss=per_net,
        grad_data=grad_data,
        grad_labels=grad_labels,
        grad_raw_lrs=grad_raw,
        final_weights=w_final,
    )
