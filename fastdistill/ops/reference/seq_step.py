"""Reference of ``fastdistill::seq_step``: the inner step (gradient and Hessian-vector products)
or the outer value-and-gradient of a sequential net described by layer records.

Written with autograd (double backward), independently of the hand-derived forward-over-reverse
math of the kernel, so the two check each other. Nets run one at a time: this is an oracle, not
a fast path.

``spec`` is a flat list of layer records (``fastdistill.engine.fused.layers.LayerKind`` holds
the codes, ``csrc/include/fastdistill/layer_kinds.h`` the C++ side):

* ``1 w_off b_off Cout Cin KH KW ph pw relu``: conv2d (stride 1) + 2x2 max pool (+ ReLU);
* ``2``: flatten;  ``3 w_off b_off out in``: linear;  ``4``: ReLU;  ``5``: tanh
  (``b_off = -1``: no bias; offsets index the columns of ``w [B, P]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SEQ_STEP_LOSSES", "SeqLayer", "parse_spec", "seq_step"]

_OP = "fastdistill::seq_step"
SEQ_STEP_LOSSES = ("soft", "softmax", "binary", "ce", "bce")
_INNER = ("soft", "softmax", "binary")
_RECORD_LEN = {1: 10, 2: 1, 3: 5, 4: 1, 5: 1}


class SeqLayer(NamedTuple):
    kind: int
    w_off: int = -1
    b_off: int = -1
    shape: tuple[int, ...] = ()
    padding: tuple[int, int] = (0, 0)
    relu: bool = False


def parse_spec(spec: Sequence[int], num_params: int) -> list[SeqLayer]:
    """The layer records of ``spec``, checked to be well formed and to lie inside ``[0, P)``."""
    layers: list[SeqLayer] = []
    i = 0
    while i < len(spec):
        kind = int(spec[i])
        n = _RECORD_LEN.get(kind)
        if n is None:
            raise ValueError(f"{_OP}: unknown layer type {kind} in `spec`")
        if i + n > len(spec):
            raise ValueError(f"{_OP}: truncated layer record in `spec`")
        r = [int(s) for s in spec[i : i + n]]
        if kind == 1:
            layer = SeqLayer(kind, r[1], r[2], tuple(r[3:7]), (r[7], r[8]), r[9] != 0)
        elif kind == 3:
            layer = SeqLayer(kind, r[1], r[2], tuple(r[3:5]))
        else:
            layer = SeqLayer(kind)
        _check_offsets(layer, num_params)
        layers.append(layer)
        i += n
    if not any(layer.w_off >= 0 for layer in layers):
        raise ValueError(f"{_OP}: `spec` has no weighted layer")
    return layers


def _check_offsets(layer: SeqLayer, num_params: int) -> None:
    if layer.kind not in (1, 3):
        return
    if any(s <= 0 for s in layer.shape):
        raise ValueError(f"{_OP}: non-positive weight shape {layer.shape} in `spec`")
    numel = 1
    for s in layer.shape:
        numel *= s
    if not 0 <= layer.w_off <= num_params - numel:
        raise ValueError(
            f"{_OP}: weight at offset {layer.w_off} (size {numel}) is outside w's {num_params} "
            "columns"
        )
    if layer.b_off != -1 and not 0 <= layer.b_off <= num_params - layer.shape[0]:
        raise ValueError(
            f"{_OP}: bias at offset {layer.b_off} (size {layer.shape[0]}) is outside w's "
            f"{num_params} columns"
        )


def _forward(wb: Tensor, x: Tensor, layers: list[SeqLayer]) -> Tensor:
    """Logits ``[N, K]`` of one net with flat parameters ``wb [P]``."""
    a = x
    for layer in layers:
        if layer.kind in (1, 3):
            numel = 1
            for s in layer.shape:
                numel *= s
            weight = wb[layer.w_off : layer.w_off + numel].view(layer.shape)
            bias = None
            if layer.b_off >= 0:
                bias = wb[layer.b_off : layer.b_off + layer.shape[0]]
            if layer.kind == 1:
                if a.dim() != 4:
                    raise ValueError(f"{_OP}: a conv_pool layer needs a 4-D input")
                a = F.max_pool2d(F.conv2d(a, weight, bias, padding=layer.padding), 2)
                a = a.relu() if layer.relu else a
            else:
                if a.dim() != 2:
                    raise ValueError(f"{_OP}: a linear layer needs a 2-D input")
                a = F.linear(a, weight, bias)
        elif layer.kind == 2:
            a = a.flatten(1)
        elif layer.kind == 4:
            a = a.relu()
        else:
            a = a.tanh()
    if a.dim() != 2:
        raise ValueError(f"{_OP}: the net must end in flat [N, K] logits")
    return a


def _loss(z: Tensor, y: Tensor, kind: str) -> Tensor:
    """Mean over the N rows of one net's loss."""
    if kind in ("binary", "bce"):
        if z.shape[-1] != 1:
            raise ValueError(f"{_OP}: binary losses need one logit")
        return F.binary_cross_entropy_with_logits(z.squeeze(-1), y.to(z.dtype))
    if kind == "ce":
        return F.cross_entropy(z, y)
    target = torch.softmax(y, -1) if kind == "softmax" else y
    return -(target * torch.log_softmax(z, -1)).sum(-1).mean()


def seq_step(
    w: Tensor,
    v: Tensor | None,
    x: Tensor,
    y: Tensor,
    spec: Sequence[int],
    loss: str,
    need_dx: bool,
    need_dy: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(value [B], g [B, P], hv, dx, dy)`` of B nets ``w [B, P]`` on the shared batch ``x``.

    Inner losses (``soft``, ``softmax``, ``binary``; ``y`` the labels): ``g`` is the gradient of
    the sum over nets of the per-net mean losses; with ``v`` given, ``hv = H_ww v`` per net and
    ``dx``/``dy`` are ``(d2l/dx dw) v`` and ``(d2l/dy dw) v`` summed over nets (when asked for).
    Outer losses (``ce``, ``bce``; ``y`` the targets): ``g`` is the gradient of the mean over
    nets. Outputs not computed come back empty (shape ``[0]``).
    """
    if loss not in SEQ_STEP_LOSSES:
        raise ValueError(f"{_OP}: unknown loss {loss!r}; expected one of {SEQ_STEP_LOSSES}")
    if w.dim() != 2:
        raise ValueError(f"{_OP}: `w` must be [B, P]")
    hvp = v is not None
    if hvp and v.shape != w.shape:
        raise ValueError(f"{_OP}: `v` must match `w`")
    layers = parse_spec(spec, w.shape[1])
    inner = loss in _INNER
    want_dy = hvp and need_dy and inner
    with torch.enable_grad():
        w_ = w.detach().requires_grad_()
        x_ = x.detach().requires_grad_(hvp and need_dx)
        y_ = y.detach().requires_grad_(want_dy)
        values = torch.stack([_loss(_forward(w_[b], x_, layers), y_, loss) for b in range(len(w_))])
        total = values.sum() if inner else values.mean()
        (g,) = torch.autograd.grad(total, w_, create_graph=hvp)
        empty = w.new_empty((0,))
        hv, dx, dy = empty, x.new_empty((0,)), y.new_empty((0,))
        if hvp:
            inputs = [w_] + ([x_] if need_dx else []) + ([y_] if want_dy else [])
            out = torch.autograd.grad(g, inputs, grad_outputs=v, allow_unused=True)
            out = [
                torch.zeros_like(t) if o is None else o for o, t in zip(out, inputs, strict=True)
            ]
            hv = out[0]
            if need_dx:
                dx = out[1]
            if want_dy:
                dy = out[-1]
    return values.detach(), g.detach(), hv.detach(), dx.detach(), dy.detach()
