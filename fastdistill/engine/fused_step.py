"""Hand-derived inner-step gradients and Hessian-vector products for common layer stacks.

The adjoint engine needs, per inner step, the gradient ``g = grad_w l`` and the products of the
step's Hessian blocks with the adjoint ``v``: ``H_ww v``, ``(d2l/dx dw) v`` and
``(d2l/dy dw) v`` (SPEC §3). Autograd gets them by double backward through a graph built with
``create_graph=True``, which costs a graph, a second differentiable backward and many small
kernels. Here they come from one forward-over-reverse pass written by hand: a primal forward,
the forward tangent of the activations along ``v`` (all zero before the first weighted layer),
the loss's gradient and its tangent, and one backward sweep that carries the primal cotangent
``delta`` and its tangent ``delta_dot`` together. The tangent of ``grad_w l`` is ``H_ww v``, the
tangent of ``grad_x l`` is ``(d2l/dx dw) v`` and that of ``grad_y l`` is ``(d2l/dy dw) v``
(symmetry of second derivatives), so one pass yields all four quantities.

Matrix products and convolutions go through ATen (``bmm``, ``convolution``,
``convolution_backward``), batched over the B nets of a ``[B, P]`` weight buffer without
``vmap``: linear layers are batched matrix products, convolutions are one grouped convolution
over ``[N, B*C, ...]`` activations (an ordinary one for the shared input). Elementwise work is
fused into as few ATen calls as possible, and a conv + 2x2 max-pool (+ ReLU) block runs on the
``fastdistill::conv_pool_*`` kernels where they are built: the full-resolution activation never
leaves the kernel (the forward pass returns the pooled values and a one-byte argmax code per
window; tangents and gradients are read and written at the coded positions only). Plans made of
conv-pool blocks, flatten, linear, ReLU and tanh layers (LeNet, MLP) run each step as ONE call of
``fastdistill::seq_step`` (csrc/cpu/seq_step.cpp, the same math in C++), which removes the
Python and dispatch overhead of ~150 small op calls per step.

Supported: ``nn.Sequential`` stacks (nested ones are flattened) and the known model classes
``LeNet``, ``ConvNet`` and ``MLP`` of ``fastdistill.models`` built from Linear, Conv1d/Conv2d
(zero padding), ReLU, Tanh, MaxPool1d/2d, AvgPool1d/2d, Flatten, GroupNorm / InstanceNorm
(without running statistics), Identity and Dropout(p=0). Anything else runs the autograd path
(which is also the oracle of the tests); ``describe(model)`` says which path a model takes and
why. ``FASTDISTILL_FUSED=0`` or ``FASTDISTILL_BACKEND=reference`` (or ``set_fused(False)``)
turn the fused path off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdistill import _extension
from fastdistill.engine.functional import FlatModel
from fastdistill.engine.losses import LabelKind, inner_loss, outer_loss
from fastdistill.models.text import first_order

__all__ = [
    "describe",
    "fused_enabled",
    "inner_grad",
    "inner_hvp",
    "outer_value_and_grad",
    "set_fused",
    "uses_fused",
]

log = logging.getLogger(__name__)
aten = torch.ops.aten
_cp = torch.ops.fastdistill

# Activation layouts. SHARED: [N, ...], one tensor for all nets (the input, and layers before
# the first weighted one). GROUPED: [N, B*C, *spatial], net-major channels (conv stacks).
# DENSE: [B, N, F] (linear stacks).
SHARED, GROUPED, DENSE = "shared", "grouped", "dense"


class Unsupported(Exception):
    """This model (or this input shape) has no fused implementation: use autograd."""


# -- the on/off switch ------------------------------------------------------------------------
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
    return _extension.get_backend() != "reference"


# -- layers -----------------------------------------------------------------------------------
@dataclass
class _Run:
    """Per-call state: number of nets and the parameter views of weights and tangent, keyed
    by the parameter's offset in the flat buffer (one ``split`` per buffer per call)."""

    B: int
    w: Tensor
    v: Tensor | None
    wv: dict[int, Tensor] = field(default_factory=dict)
    vv: dict[int, Tensor] = field(default_factory=dict)

    def P(self, layer: _Layer) -> list[Tensor]:
        return [self.wv[a] for a, _, _ in layer.slices]

    def V(self, layer: _Layer) -> list[Tensor]:
        return [self.vv[a] for a, _, _ in layer.slices]


@dataclass
class _Layer:
    """One layer of the plan. ``slices`` are (start, stop, shape) of its parameters in ``w``."""

    slices: tuple[tuple[int, int, tuple[int, ...]], ...] = ()

    # Each layer implements:
    #   forward(run, a, layout, ctx) -> (out, layout)
    #   tangent(run, ctx, a_dot) -> out_dot          (a_dot None = zero)
    #   backward(run, ctx, d, dd, need_in, need_tin) -> (d_in, dd_in, grads, tgrads)
    # with d the cotangent of the output, dd its tangent (None without HVP); grads/tgrads list
    # the parameter gradients (and their tangents) in ``slices`` order.


def _flat_weight(p: Tensor) -> Tensor:
    """``[B, Cout, ...]`` per-net weights as one ``[B*Cout, ...]`` grouped-conv weight."""
    return p.reshape(p.shape[0] * p.shape[1], *p.shape[2:])


@dataclass
class _Linear(_Layer):
    bias: bool = True

    def forward(self, run: _Run, a: Tensor, layout: str, ctx: dict) -> tuple[Tensor, str]:
        P = run.P(self)
        W = P[0]
        if layout == GROUPED or a.dim() != (2 if layout == SHARED else 3):
            raise Unsupported("Linear on a non-flat activation")
        if layout == SHARED:
            a3 = a.expand(run.B, *a.shape)
        else:
            a3 = a
        ctx["a"], ctx["shared"] = a3, layout == SHARED
        ctx["P"] = P
        if self.bias:
            out = torch.baddbmm(P[1].unsqueeze(1), a3, W.transpose(1, 2))
        else:
            out = torch.bmm(a3, W.transpose(1, 2))
        return out, DENSE

    def tangent(self, run: _Run, ctx: dict, ad: Tensor | None) -> Tensor:
        V = run.V(self)
        ctx["V"], ctx["ad"] = V, ad
        W = ctx["P"][0]
        a = ctx["a"]
        if self.bias:
            t = torch.baddbmm(V[1].unsqueeze(1), a, V[0].transpose(1, 2))
        else:
            t = torch.bmm(a, V[0].transpose(1, 2))
        if ad is not None:
            t = torch.baddbmm(t, ad, W.transpose(1, 2))
        return t

    def backward(self, run, ctx, d, dd, need_in, need_tin):
        a, W = ctx["a"], ctx["P"][0]
        dT = d.transpose(1, 2)
        grads = [torch.bmm(dT, a)]
        if self.bias:
            grads.append(d.sum(1))
        tgrads: list[Tensor] = []
        d_in = dd_in = None
        if need_in:
            d_in = torch.bmm(d, W)
        if dd is not None:
            V, ad = ctx["V"], ctx["ad"]
            gw = torch.bmm(dd.transpose(1, 2), a)
            if ad is not None:
                gw = torch.baddbmm(gw, dT, ad)
            tgrads.append(gw)
            if self.bias:
                tgrads.append(dd.sum(1))
            if need_tin:
                if ctx["shared"]:  # the shared input: sum over nets in one product
                    B, N, K = d.shape
                    both = torch.cat([dd, d], 2).transpose(0, 1).reshape(N, B * 2 * K)
                    wv = torch.cat([W, V[0]], 1).reshape(B * 2 * K, W.shape[2])
                    dd_in = both @ wv
                else:
                    dd_in = torch.baddbmm(torch.bmm(dd, W), d, V[0])
        return d_in, dd_in, grads, tgrads


@dataclass
class _Conv(_Layer):
    bias: bool = True
    stride: tuple[int, ...] = (1,)
    padding: tuple[int, ...] = (0,)
    dilation: tuple[int, ...] = (1,)
    groups: int = 1

    def _conv(self, a: Tensor, W: Tensor, b: Tensor | None, groups: int) -> Tensor:
        out_pad = [0] * len(self.stride)
        return aten.convolution(
            a, W, b, self.stride, self.padding, self.dilation, False, out_pad, groups
        )

    def _conv_bwd(self, d, a, W, groups, mask):
        out_pad = [0] * len(self.stride)
        bias_sizes = [W.shape[0]] if mask[2] else None
        return aten.convolution_backward(
            d, a, W, bias_sizes, self.stride, self.padding, self.dilation, False, out_pad,
            groups, mask,
        )  # fmt: skip

    def forward(self, run, a, layout, ctx):
        B = run.B
        spatial = len(self.stride)
        if layout == DENSE or a.dim() != 2 + spatial:
            raise Unsupported("Conv on a flat activation")
        if layout == SHARED:
            if self.groups > 1 and B > 1:
                raise Unsupported("grouped conv on the shared input of several nets")
            groups = self.groups
        else:
            groups = self.groups * B
        P = run.P(self)
        Wf = _flat_weight(P[0])
        bf = P[1].reshape(-1) if self.bias else None
        ctx.update(a=a, Wf=Wf, groups=groups)
        return self._conv(a, Wf, bf, groups), GROUPED

    def tangent(self, run, ctx, ad):
        V = run.V(self)
        Vf = _flat_weight(V[0])
        ctx["Vf"], ctx["ad"] = Vf, ad
        vb = V[1].reshape(-1) if self.bias else None
        t = self._conv(ctx["a"], Vf, vb, ctx["groups"])
        if ad is not None:
            t = t.add_(self._conv(ad, ctx["Wf"], None, ctx["groups"]))
        return t

    def backward(self, run, ctx, d, dd, need_in, need_tin):
        B = run.B
        a, Wf, groups = ctx["a"], ctx["Wf"], ctx["groups"]
        d_in, gw, gb = self._conv_bwd(d, a, Wf, groups, [need_in, True, self.bias])
        grads = [gw.view(B, -1)]
        if self.bias:
            grads.append(gb.view(B, -1))
        tgrads: list[Tensor] = []
        dd_in = None
        if dd is not None:
            Vf, ad = ctx["Vf"], ctx["ad"]
            t_in, tgw, tgb = self._conv_bwd(dd, a, Wf, groups, [need_tin, True, self.bias])
            if need_tin or ad is not None:
                t_in2, tgw2, _ = self._conv_bwd(
                    d, ad if ad is not None else a, Vf, groups, [need_tin, ad is not None, False]
                )
                if ad is not None:
                    tgw = tgw.add_(tgw2)
                if need_tin:
                    t_in = t_in.add_(t_in2)
            tgrads.append(tgw.view(B, -1))
            if self.bias:
                tgrads.append(tgb.view(B, -1))
            dd_in = t_in if need_tin else None
        return d_in, dd_in, grads, tgrads


@dataclass
class _ReLU(_Layer):
    def forward(self, run, a, layout, ctx):
        out = torch.relu(a)
        ctx["out"] = out
        return out, layout

    def tangent(self, run, ctx, ad):
        return None if ad is None else aten.threshold_backward(ad, ctx["out"], 0)

    def backward(self, run, ctx, d, dd, need_in, need_tin):
        out = ctx["out"]
        d_in = aten.threshold_backward(d, out, 0) if need_in else None
        dd_in = aten.threshold_backward(dd, out, 0) if dd is not None and need_tin else None
        return d_in, dd_in, [], []


@dataclass
class _Tanh(_Layer):
    def forward(self, run, a, layout, ctx):
        out = torch.tanh(a)
        ctx["out"] = out
        return out, layout

    def tangent(self, run, ctx, ad):
        ctx["ad"] = ad
        return None if ad is None else aten.tanh_backward(ad, ctx["out"])

    def backward(self, run, ctx, d, dd, need_in, need_tin):
        out = ctx["out"]
        d_in = aten.tanh_backward(d, out) if need_in else None
        dd_in = None
        if dd is not None and need_tin:
            dd_in = aten.tanh_backward(dd, out)
            ad = ctx.get("ad")
            if ad is not None:  # d/dt (1 - tanh^2) = -2 tanh (1 - tanh^2) a_dot
                dd_in = dd_in.sub_(2 * out * aten.tanh_backward(ad, out) * d)
        return d_in, dd_in, [], []


def _pool_input(a: Tensor, one_d: bool) -> Tensor:
    return a.unsqueeze(-2) if one_d else a


@dataclass
class _MaxPool(_Layer):
    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    one_d: bool = False

    def forward(self, run, a, layout, ctx):
        if layout == DENSE or a.dim() != (3 if self.one_d else 4):
            raise Unsupported("max pooling on a flat activation")
        a2 = _pool_input(a, self.one_d)
        out, idx = aten.max_pool2d_with_indices(
            a2, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode
        )
        ctx.update(a2=a2, idx=idx, shape=out.shape)
        return (out.squeeze(-2) if self.one_d else out), layout

    def _gather(self, ctx, t: Tensor) -> Tensor:
        idx = ctx["idx"]
        t2 = _pool_input(t, self.one_d).flatten(2)
        out = t2.gather(2, idx.flatten(2)).view(ctx["shape"])
        return out.squeeze(-2) if self.one_d else out

    def _scatter(self, ctx, d: Tensor) -> Tensor:
        d2 = _pool_input(d, self.one_d)
        out = aten.max_pool2d_with_indices_backward(
            d2, ctx["a2"], self.kernel, self.stride, self.padding, self.dilation,
            self.ceil_mode, ctx["idx"],
        )  # fmt: skip
        return out.squeeze(-2) if self.one_d else out

    def tangent(self, run, ctx, ad):
        return None if ad is None else self._gather(ctx, ad)

    def backward(self, run, ctx, d, dd, need_in, need_tin):
        d_in = self._scatter(ctx, d) if need_in else None
        dd_in = self._scatter(ctx, dd) if dd is not None and need_tin else None
        return d_in, dd_in, [], []


@dataclass
class _AvgPool(_Layer):
    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    padding: tuple[int, int] = (0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None
    one_d: bool = False

    def _pool(self, t: Tensor) -> Tensor:
        out = aten.avg_pool2d(
            _pool_input(t, self.one_d), self.kernel, self.stride, self.padding,
            self.ceil_mode, self.count_include_pad, self.divisor_override,
        )  # fmt: skip
        return out.squeeze(-2) if self.one_d else out

    def forward(self, run, a, layout, ctx):
        if layout == DENSE or a.dim() != (3 if self.one_d else 4):
            raise Unsupported("average pooling on a flat activation")
        ctx["a2"] = _pool_input(a, self.one_d)
        return self._pool(a), layout

    def tangent(self, run, ctx, ad):
        return None if ad is None else self._pool(ad)

    def _back(self, ctx, d):
        out = aten.avg_pool2d_backward(
            _pool_input(d, self.one_d), ctx["a2"], self.kernel, self.stride, self.padding,
            self.ceil_mode, self.count_include_pad, self.divisor_override,
        )  # fmt: skip
        return out.squeeze(-2) if self.one_d else out

    def backward(self, run, ctx, d, dd, need_in, need_tin):
        d_in = self._back(ctx, d) if need_in else None
        dd_in = self._back(ctx, dd) if dd is not None and need_tin else None
        return d_in, dd_in, [], []


@dataclass
class _Flatten(_Layer):
    def _fwd(self, run, t: Tensor, layout: str) -> Tensor:
        if layout == SHARED:
            return t.flatten(1)
        if layout == GROUPED:
            N = t.shape[0]
            return t.reshape(N, run.B, -1).transpose(0, 1)
        return t

    def forward(self, run, a, layout, ctx):
        ctx.update(shape=a.shape, layout=layout)
        return self._fwd(run, a, layout), (SHARED if layout == SHARED else DENSE)

    def tangent(self, run, ctx, ad):
        return None if ad is None else self._fwd(run, ad, ctx["layout"])

    def _back(self, ctx, d: Tensor) -> Tensor:
        if ctx["layout"] == GROUPED:
            return d.transpose(0, 1).reshape(ctx["shape"])
        return d.reshape(ctx["shape"])

    def backward(self, run, ctx, d, dd, need_in, need_tin):
        d_in = self._back(ctx, d) if need_in else None
        dd_in = self._back(ctx, dd) if dd is not None and need_tin else None
        return d_in, dd_in, [], []


@dataclass
class _GroupNorm(_Layer):
    """Group norm (instance norm = one group per channel), optionally affine."""

    num_groups: int = 1
    eps: float = 1e-5
    affine: bool = True

    def forward(self, run, a, layout, ctx):
        if layout == DENSE or a.dim() < 3:
            raise Unsupported("group norm on a flat activation")
        if layout == SHARED and self.affine:
            raise Unsupported("affine group norm before the first weighted layer")
        nets = run.B if layout == GROUPED else 1
        N, BC = a.shape[:2]
        G = self.num_groups * nets
        x = a.reshape(N, G, BC // G, -1)
        mu = x.mean((2, 3), keepdim=True)
        xc = x - mu
        rstd = (xc.square().mean((2, 3), keepdim=True) + self.eps).rsqrt()
        xh = xc.mul_(rstd)
        ctx.update(xh=xh, rstd=rstd, shape=a.shape, G=G)
        if self.affine:
            P = run.P(self)
            gam = P[0].reshape(1, G, BC // G, 1)
            bet = P[1].reshape(1, G, BC // G, 1)
            ctx["gam"] = gam
            out = torch.addcmul(bet, xh, gam)
        else:
            out = xh
        return out.view(a.shape), layout

    def _view(self, ctx, t: Tensor) -> Tensor:
        N, BC = ctx["shape"][:2]
        G = ctx["G"]
        return t.reshape(N, G, BC // G, -1)

    def tangent(self, run, ctx, ad):
        xh, rstd = ctx["xh"], ctx["rstd"]
        ctx["ad"] = ad
        if ad is not None:
            x_dot = self._view(ctx, ad)
            m2 = (xh * x_dot).mean((2, 3), keepdim=True)
            xh_dot = (x_dot - x_dot.mean((2, 3), keepdim=True) - xh * m2) * rstd
            ctx["xh_dot"], ctx["m2"] = xh_dot, m2
        if not self.affine:
            return None if ad is None else ctx["xh_dot"].view(ctx["shape"])
        G, Cg = xh.shape[1], xh.shape[2]
        V = run.V(self)
        vg, vb = V[0].reshape(1, G, Cg, 1), V[1].reshape(1, G, Cg, 1)
        ctx["vg"] = vg
        t = torch.addcmul(vb, xh, vg)
        if ad is not None:
            t = t.addcmul_(ctx["xh_dot"], ctx["gam"])
        return t.view(ctx["shape"])

    def _input_grad(self, xh, rstd, u):
        m_u = u.mean((2, 3), keepdim=True)
        m_ux = (u * xh).mean((2, 3), keepdim=True)
        return (u - m_u - xh * m_ux) * rstd, m_ux

    def backward(self, run, ctx, d, dd, need_in, need_tin):
        B = run.B
        xh, rstd = ctx["xh"], ctx["rstd"]
        if d is None:  # before the first weighted layer: only the tangent flows, a_dot = 0
            if dd is None or not need_tin:
                return None, None, [], []
            dd_in, _ = self._input_grad(xh, rstd, self._view(ctx, dd))
            return None, dd_in.view(ctx["shape"]), [], []
        dv = self._view(ctx, d)
        grads: list[Tensor] = []
        tgrads: list[Tensor] = []
        if self.affine:
            grads = [(dv * xh).sum((0, 3)).reshape(B, -1), dv.sum((0, 3)).reshape(B, -1)]
            u = dv * ctx["gam"]
        else:
            u = dv
        ad = ctx.get("ad")
        need_primal = need_in or (dd is not None and need_tin and ad is not None)
        d_in = m_ux = None
        if need_primal:
            d_in, m_ux = self._input_grad(xh, rstd, u)
        dd_in = None
        if dd is not None:
            ddv = self._view(ctx, dd)
            xh_dot = ctx.get("xh_dot")
            if self.affine:
                gg = ddv * xh
                if xh_dot is not None:
                    gg = gg.addcmul_(dv, xh_dot)
                tgrads = [gg.sum((0, 3)).reshape(B, -1), ddv.sum((0, 3)).reshape(B, -1)]
                u_dot = torch.addcmul(ddv * ctx["gam"], dv, ctx["vg"])
            else:
                u_dot = ddv
            if need_tin:
                if xh_dot is None:
                    dd_in, _ = self._input_grad(xh, rstd, u_dot)
                else:
                    m_ud = u_dot.mean((2, 3), keepdim=True)
                    m_mix = (u_dot * xh + u * xh_dot).mean((2, 3), keepdim=True)
                    dd_in = (u_dot - m_ud - xh_dot * m_ux - xh * m_mix) * rstd
                    dd_in = dd_in.sub_(d_in * (ctx["m2"] * rstd))
                dd_in = dd_in.view(ctx["shape"])
        if d_in is not None:
            d_in = d_in.view(ctx["shape"]) if need_in else None
        return d_in, dd_in, grads, tgrads


@dataclass
class _ConvPool(_Layer):
    """Conv2d (stride 1) + 2x2/2 max pool (+ ReLU, either order) on the fused
    ``fastdistill::conv_pool_*`` kernels; ``sub`` (the same layers unfused) runs where no
    kernel can (reference backend, other dtypes or devices)."""

    conv: _Conv = field(default_factory=_Conv)
    relu: bool = True
    sub: tuple[_Layer, ...] = ()

    def _kernel(self, a: Tensor, layout: str) -> bool:
        return (
            layout != DENSE
            and a.dim() == 4
            and a.dtype in (torch.float32, torch.float64)
            and _extension.choose("conv_pool_forward", a.device).backend == "kernel"
        )

    def _weights(self, run: _Run, tangent: bool) -> tuple[Tensor, Tensor | None]:
        P = run.V(self) if tangent else run.P(self)
        return P[0], (P[1] if self.conv.bias else None)

    def forward(self, run, a, layout, ctx):
        ctx["kernel"] = self._kernel(a, layout)
        if not ctx["kernel"]:
            ctx["sub"] = [{} for _ in self.sub]
            for layer, c in zip(self.sub, ctx["sub"]):
                a, layout = layer.forward(run, a, layout, c)
            return a, layout
        W, b = self._weights(run, False)
        out, code = _cp.conv_pool_forward.default(a, W, b, self.conv.padding, self.relu)
        ctx.update(a=a, W=W, code=code)
        return out, GROUPED

    def tangent(self, run, ctx, ad):
        if not ctx["kernel"]:
            for layer, c in zip(self.sub, ctx["sub"]):
                ad = layer.tangent(run, c, ad)
            return ad
        V, vb = self._weights(run, True)
        ctx["V"], ctx["ad"] = V, ad
        pad, code = self.conv.padding, ctx["code"]
        t = _cp.conv_pool_gather.default(ctx["a"], V, vb, code, pad)
        if ad is not None:
            t = t.add_(_cp.conv_pool_gather.default(ad, ctx["W"], None, code, pad))
        return t

    def backward(self, run, ctx, d, dd, need_in, need_tin):
        if not ctx["kernel"]:
            grads: list[Tensor] = []
            tgrads: list[Tensor] = []
            last = len(self.sub) - 1
            for i in range(last, -1, -1):  # inside the block every cotangent is needed
                inner = i > 0
                d, dd, g, tg = self.sub[i].backward(
                    run,
                    ctx["sub"][i],
                    d,
                    dd,
                    inner or need_in,
                    (inner and dd is not None) or need_tin,
                )
                grads, tgrads = grads or g, tgrads or tg
            return d, dd, grads, tgrads
        B, has_b = run.B, self.conv.bias
        a, W, code, pad = ctx["a"], ctx["W"], ctx["code"], self.conv.padding
        bwd = _cp.conv_pool_backward.default
        d_in, gw, gb = bwd(d, a, W, code, pad, [need_in, True, has_b])
        grads = [gw.view(B, -1)] + ([gb] if has_b else [])
        tgrads = []
        dd_in = None
        if dd is not None:
            V, ad = ctx["V"], ctx["ad"]
            t_in, tgw, tgb = bwd(dd, a, W, code, pad, [need_tin, True, has_b])
            if need_tin or ad is not None:
                src = ad if ad is not None else a
                t_in2, tgw2, _ = bwd(d, src, V, code, pad, [need_tin, ad is not None, False])
                if ad is not None:
                    tgw = tgw.add_(tgw2)
                if need_tin:
                    t_in = t_in.add_(t_in2)
            tgrads = [tgw.view(B, -1)] + ([tgb] if has_b else [])
            dd_in = t_in if need_tin else None
        return (d_in if need_in else None), dd_in, grads, tgrads


def _fuse_conv_pool(layers: list[_Layer]) -> list[_Layer]:
    """Replace Conv2d -> MaxPool2d(2) [-> ReLU] and Conv2d -> ReLU -> MaxPool2d(2) runs by
    ``_ConvPool`` (ReLU and max commute, values and gradients alike)."""

    def pool2(m: _Layer) -> bool:
        return (
            isinstance(m, _MaxPool)
            and not m.one_d
            and m.kernel == (2, 2)
            and m.stride == (2, 2)
            and m.padding == (0, 0)
            and m.dilation == (1, 1)
            and not m.ceil_mode
        )

    def conv2d(m: _Layer) -> bool:
        return (
            isinstance(m, _Conv)
            and len(m.stride) == 2
            and m.stride == (1, 1)
            and m.dilation == (1, 1)
            and m.groups == 1
        )

    out: list[_Layer] = []
    i = 0
    while i < len(layers):
        m = layers[i]
        nxt = layers[i + 1 : i + 3]
        if conv2d(m) and nxt and pool2(nxt[0]):
            relu = len(nxt) > 1 and isinstance(nxt[1], _ReLU)
            n = 3 if relu else 2
        elif conv2d(m) and len(nxt) == 2 and isinstance(nxt[0], _ReLU) and pool2(nxt[1]):
            relu, n = True, 3
        else:
            out.append(m)
            i += 1
            continue
        sub = tuple(layers[i : i + n])
        out.append(_ConvPool(m.slices, conv=m, relu=relu, sub=sub))  # type: ignore[arg-type]
        i += n
    return out


# -- plans ------------------------------------------------------------------------------------
@dataclass
class Plan:
    """The fused implementation of one model: its layers and where they sit in ``w``."""

    layers: list[_Layer]
    first_weighted: int
    num_params: int
    bad_shapes: set[tuple[Any, ...]] = field(default_factory=set)
    slices: list[tuple[int, int, tuple[int, ...]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.slices = sorted(s for layer in self.layers for s in layer.slices)
        self._sizes = [b - a for a, b, _ in self.slices]

    def views(self, flat: Tensor) -> dict[int, Tensor]:
        """Per-parameter ``[B, *shape]`` views of a ``[B, P]`` buffer."""
        B = flat.shape[0]
        parts = torch.split(flat, self._sizes, dim=1)
        return {a: t.view(B, *shape) for (a, _, shape), t in zip(self.slices, parts)}

    def gather(self, pieces: dict[int, Tensor], B: int) -> Tensor:
        """The ``[B, P]`` buffer of per-parameter pieces (keyed by offset)."""
        return torch.cat([pieces[a].reshape(B, -1) for a, _, _ in self.slices], 1)

    def summary(self) -> str:
        return " -> ".join(type(layer).__name__.lstrip("_") for layer in self.layers)

    @property
    def spec(self) -> list[int] | None:
        """The layer records of ``fastdistill::seq_step`` (csrc/cpu/seq_step.cpp), or None when
        a layer has no C++ counterpart (the Python implementation runs then)."""
        if not hasattr(self, "_spec"):
            self._spec = _seq_spec(self.layers)
        return self._spec

    @property
    def has_conv_pool(self) -> bool:
        return any(isinstance(layer, _ConvPool) for layer in self.layers)


def _seq_spec(layers: list[_Layer]) -> list[int] | None:
    spec: list[int] = []
    for layer in layers:
        if isinstance(layer, _ConvPool):
            (w_off, _, shape), *rest = layer.conv.slices
            b_off = rest[0][0] if rest else -1
            spec += [1, w_off, b_off, *shape, *layer.conv.padding, int(layer.relu)]
        elif isinstance(layer, _Linear):
            (w_off, _, shape), *rest = layer.slices
            spec += [3, w_off, rest[0][0] if rest else -1, *shape]
        elif isinstance(layer, _Flatten):
            spec.append(2)
        elif isinstance(layer, _ReLU):
            spec.append(4)
        elif isinstance(layer, _Tanh):
            spec.append(5)
        else:
            return None
    return spec


def _pair(v: Any, n: int = 2) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The module as a flat sequence of (qualified name, leaf module), or raise Unsupported."""
    from fastdistill.models.image import MLP, ConvNet, LeNet

    def seq(prefix: str, m: nn.Module) -> list[tuple[str, nn.Module]]:
        out = []
        for name, sub in m._modules.items():  # not named_children(): it drops repeats
            if sub is None:
                continue
            full = f"{prefix}{name}"
            if type(sub) is nn.Sequential:
                out += seq(full + ".", sub)
            else:
                out.append((full, sub))
        return out

    kind = type(module)
    if kind is nn.Sequential:
        return seq("", module)
    if kind is LeNet:
        m = module
        act, pool = ("act", m.act), ("pool", m.pool)
        return [
            ("conv1", m.conv1), pool, act, ("conv2", m.conv2), pool, act, ("", nn.Flatten()),
            ("fc1", m.fc1), act, ("fc2", m.fc2), act, ("fc3", m.fc3),
        ]  # fmt: skip
    if kind is ConvNet:
        return seq("features.", module.features) + [
            ("", nn.Flatten()),
            ("classifier", module.classifier),
        ]
    if kind is MLP:
        return seq("net.", module.net)
    raise Unsupported(f"{kind.__name__} is not a known model class or an nn.Sequential")


def _layer(
    name: str, m: nn.Module, index: dict[str, tuple[int, int, tuple[int, ...]]]
) -> _Layer | None:
    def sl(*pnames: str) -> tuple[tuple[int, int, tuple[int, ...]], ...]:
        out = []
        for p in pnames:
            key = f"{name}.{p}" if name else p
            if key not in index:
                raise Unsupported(f"parameter {key} not found in the flat layout")
            out.append(index[key])
        return tuple(out)

    kind = type(m)
    if kind is nn.Linear:
        has_b = m.bias is not None
        return _Linear(sl("weight", "bias") if has_b else sl("weight"), bias=has_b)
    if kind in (nn.Conv1d, nn.Conv2d):
        if m.padding_mode != "zeros" or m.transposed:
            raise Unsupported(f"{name}: padding_mode {m.padding_mode!r}")
        n = 1 if kind is nn.Conv1d else 2
        padding = m.padding
        if isinstance(padding, str):
            if padding != "valid":
                raise Unsupported(f"{name}: padding={padding!r}")
            padding = (0,) * n
        has_b = m.bias is not None
        return _Conv(
            sl("weight", "bias") if has_b else sl("weight"),
            bias=has_b, stride=_pair(m.stride, n), padding=_pair(padding, n),
            dilation=_pair(m.dilation, n), groups=m.groups,
        )  # fmt: skip
    if kind is nn.ReLU:
        return _ReLU()
    if kind is nn.Tanh:
        return _Tanh()
    if kind in (nn.MaxPool1d, nn.MaxPool2d):
        if m.return_indices:
            raise Unsupported(f"{name}: return_indices")
        one = kind is nn.MaxPool1d
        k = _pair(m.kernel_size, 1 if one else 2)
        s = _pair(m.stride if m.stride is not None else m.kernel_size, 1 if one else 2)
        p = _pair(m.padding, 1 if one else 2)
        d = _pair(m.dilation, 1 if one else 2)
        if one:
            k, s, p, d = (1, *k), (1, *s), (0, *p), (1, *d)
        return _MaxPool(kernel=k, stride=s, padding=p, dilation=d, ceil_mode=m.ceil_mode, one_d=one)
    if kind in (nn.AvgPool1d, nn.AvgPool2d):
        one = kind is nn.AvgPool1d
        k = _pair(m.kernel_size, 1 if one else 2)
        s = _pair(m.stride if m.stride is not None else m.kernel_size, 1 if one else 2)
        p = _pair(m.padding, 1 if one else 2)
        div = None if one else m.divisor_override
        if one:
            k, s, p = (1, *k), (1, *s), (0, *p)
        return _AvgPool(
            kernel=k, stride=s, padding=p, ceil_mode=m.ceil_mode,
            count_include_pad=m.count_include_pad, divisor_override=div, one_d=one,
        )  # fmt: skip
    if kind is nn.Flatten:
        if m.start_dim != 1 or m.end_dim != -1:
            raise Unsupported(f"{name}: Flatten({m.start_dim}, {m.end_dim})")
        return _Flatten()
    if kind is nn.GroupNorm:
        return _GroupNorm(
            sl("weight", "bias") if m.affine else (),
            num_groups=m.num_groups, eps=m.eps, affine=m.affine,
        )  # fmt: skip
    if kind in (nn.InstanceNorm1d, nn.InstanceNorm2d):
        if m.track_running_stats:
            raise Unsupported(f"{name}: instance norm with running statistics")
        return _GroupNorm(
            sl("weight", "bias") if m.affine else (),
            num_groups=m.num_features, eps=m.eps, affine=m.affine,
        )  # fmt: skip
    if kind is nn.Identity or (kind is nn.Dropout and m.p == 0):
        return None
    raise Unsupported(f"{name or 'layer'}: {kind.__name__} has no fused implementation")


def build_plan(model: FlatModel, use_conv_pool: bool = True) -> Plan:
    """The fused plan of a model, or raise Unsupported saying why."""
    if model._buffers:
        raise Unsupported("the model has buffers")
    index = {name: (s.start, s.stop, shape) for name, s, shape in model.param_slices()}
    layers: list[_Layer] = []
    for name, m in _children(model.module):
        layer = _layer(name, m, index)
        if layer is not None:
            layers.append(layer)
    used = sorted(s for layer in layers for s in layer.slices)
    covered = sum(b - a for a, b, _ in used)
    if covered != model.num_params or len({a for a, _, _ in used}) != len(used):
        raise Unsupported("the layers do not use every parameter exactly once")
    weighted = [i for i, layer in enumerate(layers) if layer.slices]
    if not weighted:
        raise Unsupported("no weighted layer")
    if use_conv_pool:
        layers = _fuse_conv_pool(layers)
        weighted = [i for i, layer in enumerate(layers) if layer.slices]
    return Plan(layers, weighted[0], model.num_params)


_plans: weakref.WeakKeyDictionary[FlatModel, Plan | str] = weakref.WeakKeyDictionary()


def _plan(model: FlatModel) -> Plan | str:
    """Cached plan, or the reason there is none."""
    got = _plans.get(model)
    if got is None:
        try:
            got = build_plan(model)
            log.info("fastdistill fused inner step for %r: %s", model, got.summary())
        except Unsupported as exc:
            got = f"autograd fallback: {exc}"
            log.info("fastdistill fused inner step unavailable for %r (%s)", model, got)
        _plans[model] = got
    return got


def describe(model: FlatModel) -> str:
    """Which path the adjoint engine takes for this model, and why."""
    got = _plan(model)
    if isinstance(got, str):
        return got
    if not fused_enabled():
        return f"autograd (fused path switched off): {got.summary()}"
    cpu = torch.device("cpu")
    kernels = _extension.use_kernels(cpu, "conv_pool_forward")[0]
    if (
        got.spec is not None
        and _extension.use_kernels(cpu, "seq_step")[0]
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
    got = _plan(model)
    if isinstance(got, str) or not fused_enabled():
        return False
    return x is None or _shape_key(x) not in got.bad_shapes


def _shape_key(x: Tensor) -> tuple[Any, ...]:
    return (tuple(x.shape[1:]), x.dtype, x.device.type)


# -- the fused pass ---------------------------------------------------------------------------
def _loss_grads(
    z: Tensor, y: Tensor, kind: str, z_dot: Tensor | None, need_dy: bool
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Inner loss value per net, dl/dz, its tangent along z_dot, and (d2l/dy dz) z_dot summed
    over nets (y is shared)."""
    N = z.shape[1]
    if kind == "binary":
        if z.shape[-1] != 1:
            raise Unsupported("binary loss needs one logit")
        zz = z.squeeze(-1)
        yy = y.to(zz.dtype).expand_as(zz)
        value = F.binary_cross_entropy_with_logits(zz, yy, reduction="none").mean(-1)
        sig = torch.sigmoid(zz)
        d = ((sig - yy) / N).unsqueeze(-1)
        dd = dy = None
        if z_dot is not None:
            zd = z_dot.squeeze(-1)
            dd = (sig * (1 - sig) * zd / N).unsqueeze(-1)
            if need_dy:
                dy = zd.sum(0).div_(-N)
        return value, d, dd, dy
    logp = torch.log_softmax(z, -1)
    p = logp.exp()
    target = torch.softmax(y, -1) if kind == "softmax" else y
    value = -(target * logp).sum(-1).mean(-1)
    s = target.sum(-1, keepdim=True)
    d = (p * s - target) / N
    dd = dy = None
    if z_dot is not None:
        zc = z_dot - (p * z_dot).sum(-1, keepdim=True)  # tangent of log_softmax
        dd = p * zc * (s / N)
        if need_dy:
            u = zc.sum(0).div_(-N)  # tangent of dl/dtarget = -log_softmax / N
            if kind == "softmax":
                u = target * (u - (target * u).sum(-1, keepdim=True))
            dy = u
    return value, d, dd, dy


def _run(
    plan: Plan,
    w: Tensor,
    x: Tensor,
    *,
    v: Tensor | None = None,
    loss: Any,
    need_dx: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Any]:
    """Forward (+ tangent), loss, backward (+ tangent). ``loss(z, z_dot)`` returns
    ``(value, d, dd, extra)``. Returns (value, g, hv, dx, extra)."""
    B = w.shape[0]
    run = _Run(B, w, v, plan.views(w), plan.views(v) if v is not None else {})
    ctxs: list[dict] = []
    a, layout, ad = x, SHARED, None
    for i, layer in enumerate(plan.layers):
        ctx: dict = {}
        a, layout = layer.forward(run, a, layout, ctx)
        if v is not None and (i >= plan.first_weighted):
            ad = layer.tangent(run, ctx, ad)
        ctxs.append(ctx)
    if layout != DENSE:
        raise Unsupported("the model output is not a flat [N, K] logit matrix")
    value, d, dd, extra = loss(a, ad)
    g: dict[int, Tensor] = {}
    hv: dict[int, Tensor] = {}
    first = plan.first_weighted
    for i in range(len(plan.layers) - 1, -1, -1):
        layer = plan.layers[i]
        need_in = i > first
        need_tin = v is not None and (need_in or need_dx)
        d_in, dd_in, grads, tgrads = layer.backward(run, ctxs[i], d, dd, need_in, need_tin)
        for (s0, _, _), gr in zip(layer.slices, grads):
            g[s0] = gr
        for (s0, _, _), gr in zip(layer.slices, tgrads):
            hv[s0] = gr
        d, dd = d_in, dd_in
        if d is None and dd is None:
            break
    dx = dd if need_dx else None
    return value, plan.gather(g, B), (plan.gather(hv, B) if v is not None else None), dx, extra


def _below_autograd():
    """Skip the autograd dispatch layer (nothing here records a graph): saves a few
    microseconds per op call, many per step."""
    guard = getattr(torch._C, "_AutoDispatchBelowAutograd", None)
    return guard() if guard is not None else contextlib.nullcontext()


def _fused_call(model: FlatModel, w: Tensor, x: Tensor, fn):
    """Run ``fn(plan)`` on the fused path if this model and input allow it, else None."""
    got = _plan(model)
    if isinstance(got, str) or not fused_enabled():
        return None
    key = _shape_key(x)
    if key in got.bad_shapes:
        return None
    try:
        with torch.no_grad(), _below_autograd():
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
    return _extension.choose(op, w.device).backend == "kernel"


def _seq_step(plan, w, v, x, y, loss, need_dx, need_dy):
    try:
        return _cp.seq_step.default(w, v, x, y, plan.spec, loss, need_dx, need_dy)
    except ValueError as exc:  # shape checks of the C++ step: this input is not supported
        raise Unsupported(str(exc).splitlines()[0]) from exc


# -- public entry points ----------------------------------------------------------------------
def inner_grad(model: FlatModel, w: Tensor, x: Tensor, y: Tensor, kind: LabelKind) -> Tensor:
    """``grad_w`` of the summed inner losses of B nets, ``[B, P]`` (detached)."""

    def fused(plan: Plan) -> Tensor:
        if _seq(plan, w, x):
            return _seq_step(plan, w.detach(), None, x, y, kind, False, False)[1]
        loss = lambda z, zd: _loss_grads(z, y, kind, None, False)
        return _run(plan, w.detach(), x, loss=loss)[1]

    out = _fused_call(model, w, x, fused)
    return out if out is not None else autograd_inner_grad(model, w, x, y, kind)


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
        loss = lambda z, zd: _loss_grads(z, y, kind, zd, learn_labels)
        _, g, hv, dx, dy = _run(plan, w.detach(), x, v=v.detach(), loss=loss, need_dx=True)
        return g, hv, dx, dy

    out = _fused_call(model, w, x, fused)
    return out if out is not None else autograd_inner_hvp(model, w, x, y, kind, v, learn_labels)


def _outer_loss_grads(z: Tensor, targets: Tensor, binary: bool):
    """Per-net hard-label loss and d(mean over nets)/dz."""
    B, N = z.shape[:2]
    if binary:
        if z.shape[-1] != 1:
            raise Unsupported("binary loss needs one logit")
        zz = z.squeeze(-1)
        t = targets.to(zz.dtype).expand_as(zz)
        value = F.binary_cross_entropy_with_logits(zz, t, reduction="none").mean(-1)
        d = ((torch.sigmoid(zz) - t) / (N * B)).unsqueeze(-1)
        return value, d, None, None
    logp = torch.log_softmax(z, -1)
    idx = targets.view(1, N, 1).expand(B, N, 1)
    value = -logp.gather(-1, idx).squeeze(-1).mean(-1)
    d = logp.exp_().scatter_add_(-1, idx, torch.full_like(idx, -1, dtype=z.dtype)).div_(N * B)
    return value, d, None, None


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
        loss = lambda z, zd: _outer_loss_grads(z, y, binary)
        value, g, _, _, _ = _run(plan, w.detach(), x, loss=loss)
        return value, g

    out = _fused_call(model, w, x, fused)
    return out if out is not None else autograd_outer_value_and_grad(model, w, x, y, binary)


# -- the autograd path: fallback and oracle ---------------------------------------------------
def autograd_inner_grad(
    model: FlatModel, w: Tensor, x: Tensor, y: Tensor, kind: LabelKind
) -> Tensor:
    """``inner_grad`` by autograd (any model)."""
    with torch.enable_grad():
        w_ = w.detach().requires_grad_()
        loss = inner_loss(model.forward(w_, x, train=True), y, kind).sum()
        (g,) = torch.autograd.grad(loss, w_)
    return g


def autograd_inner_hvp(
    model: FlatModel,
    w: Tensor,
    x: Tensor,
    y: Tensor,
    kind: LabelKind,
    v: Tensor,
    learn_labels: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``inner_hvp`` by double backward (any model)."""
    with torch.enable_grad():
        w_ = w.detach().requires_grad_()
        x_ = x.detach().clone().requires_grad_()
        y_ = y.detach().clone().requires_grad_(learn_labels)
        loss = inner_loss(model.forward(w_, x_, train=True), y_, kind).sum()
        (g,) = torch.autograd.grad(loss, w_, create_graph=True)
        inputs = (w_, x_, y_) if learn_labels else (w_, x_)
        out = torch.autograd.grad(g, inputs, grad_outputs=v, allow_unused=True)
    hv, dx = (torch.zeros_like(t) if o is None else o for o, t in zip(out[:2], (w_, x_)))
    dy = None
    if learn_labels:
        dy = torch.zeros_like(y_) if out[2] is None else out[2]
    return g.detach(), hv, dx, dy


def autograd_outer_value_and_grad(
    model: FlatModel, w: Tensor, x: Tensor, y: Tensor, binary: bool
) -> tuple[Tensor, Tensor]:
    """``outer_value_and_grad`` by autograd (any model; first order, so recurrent models may
    run torch's fused RNN kernels)."""
    with torch.enable_grad(), first_order():
        w_ = w.detach().requires_grad_()
        per_net = outer_loss(model.forward(w_, x, train=False), y, binary)
        (g,) = torch.autograd.grad(per_net.mean(), w_)
    return per_net.detach(), g
