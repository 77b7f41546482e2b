"""The layer kinds of the fused inner step: each one's forward, forward tangent and backward
(with the backward's tangent), batched over the B nets of a ``[B, P]`` weight buffer.

The adjoint engine needs, per inner step, the gradient ``g = grad_w l`` and the products of the
step's Hessian blocks with the adjoint ``v`` (docs/algorithm.md §3). Each layer here supplies its
part of one forward-over-reverse pass (see :mod:`fastdistill.engine.fused.run`): a primal
forward, the tangent of its output along ``v``, and a backward that carries the primal cotangent
``delta`` and its tangent ``delta_dot`` together.

Matrix products and convolutions go through ATen (``bmm``, ``convolution``,
``convolution_backward``) without ``vmap``: linear layers are batched matrix products,
convolutions one grouped convolution over ``[N, B*C, ...]`` activations (an ordinary one for the
shared input). A conv + 2x2 max-pool (+ ReLU) block runs on the ``fastdistill.ops.conv_pool_*``
ops: the full-resolution activation never leaves the kernel.

:class:`LayerKind` numbers the kinds that the one-call C++ step (``fastdistill.ops.seq_step``)
implements; ``csrc/include/fastdistill/layer_kinds.h`` is its C++ side (a test keeps the two
equal).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fastdistill import ops

__all__ = ["DENSE", "GROUPED", "SHARED", "LayerKind", "Unsupported"]


class LayerKind(enum.IntEnum):
    """Layer record codes of ``fastdistill.ops.seq_step``."""

    CONV_POOL = 1  # w_off b_off Cout Cin KH KW ph pw relu
    FLATTEN = 2
    LINEAR = 3  # w_off b_off out in
    RELU = 4
    TANH = 5


aten = torch.ops.aten

# Activation layouts. SHARED: [N, ...], one tensor for all nets (the input, and layers before
# the first weighted one). GROUPED: [N, B*C, *spatial], net-major channels (conv stacks).
# DENSE: [B, N, F] (linear stacks).
SHARED, GROUPED, DENSE = "shared", "grouped", "dense"


class Unsupported(Exception):
    """This model (or this input shape) has no fused implementation: use autograd."""


# -- the on/off switch ------------------------------------------------------------------------
_override: bool | None = None


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
        a3 = a.expand(run.B, *a.shape) if layout == SHARED else a
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
            and ops.runs_kernel("conv_pool_forward", a.device)
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
        out, code = ops.conv_pool_forward(a, W, b, self.conv.padding, self.relu)
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
        t = ops.conv_pool_gather(ctx["a"], V, vb, code, pad)
        if ad is not None:
            t = t.add_(ops.conv_pool_gather(ad, ctx["W"], None, code, pad))
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
        if dd is None:
            d_in, gw, gb = ops.conv_pool_backward(d, a, W, code, pad, [need_in, True, has_b])
            return d_in, None, [gw.view(B, -1)] + ([gb] if has_b else []), []
        d_in, gw, gb, t_in, tgw, tgb = ops.conv_pool_backward_tangent(
            d, dd, a, ctx["ad"], W, ctx["V"], code, pad, [need_in, need_tin, has_b]
        )
        grads = [gw.view(B, -1)] + ([gb] if has_b else [])
        tgrads = [tgw.view(B, -1)] + ([tgb] if has_b else [])
        dd_in = t_in if need_tin else None
        return (d_in if need_in else None), dd_in, grads, tgrads
