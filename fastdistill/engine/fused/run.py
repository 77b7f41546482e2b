"""One forward-over-reverse pass over a plan (the Python implementation of the fused step).

A primal forward, the forward tangent of the activations along ``v`` (all zero before the first
weighted layer), the loss's gradient and its tangent, and one backward sweep that carries the
primal cotangent ``delta`` and its tangent ``delta_dot`` together. The tangent of ``grad_w l`` is
``H_ww v``, the tangent of ``grad_x l`` is ``(d2l/dx dw) v`` and that of ``grad_y l`` is
``(d2l/dy dw) v`` (symmetry of second derivatives), so one pass yields all four quantities.
``fastdistill.ops.seq_step`` is the same pass in one C++ call.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fastdistill.engine.fused.layers import DENSE, SHARED, Unsupported, _Run
from fastdistill.engine.fused.plan import Plan

__all__ = ["run_plan"]


def run_plan(
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
