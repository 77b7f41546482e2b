"""Python-side registrations of the compiled ops: fake (meta) kernels, autograd formulas, vmap
rules. Called once by ``fastdistill._extension.load()`` right after ``fastdistill._C`` loads
(the ops must exist before anything can be registered on them)."""

from __future__ import annotations

import torch
from torch import Tensor

from fastdistill.ops.reference import softplus

_done = False


# ----------------------------------------------------------------------------- inner_update
def _inner_update_fake(w: Tensor, g: Tensor, raw_lr: Tensor) -> Tensor:
    torch._check(g.shape == w.shape, lambda: "fastdistill::inner_update: `g` must match `w`")
    torch._check(raw_lr.dim() == 0, lambda: "fastdistill::inner_update: `raw_lr` must be 0-d")
    return torch.empty(w.shape, dtype=w.dtype, device=w.device)


def _inner_update_setup_context(ctx, inputs, output) -> None:
    _, g, raw_lr = inputs
    ctx.save_for_backward(g if ctx.needs_input_grad[2] else None, raw_lr)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    if a.dtype in (torch.float32, torch.float64):
        return torch.dot(a.reshape(-1), b.reshape(-1))  # no [B, P] temporary
    return (a * b).sum()


def _inner_update_backward(ctx, grad: Tensor):
    # out = w - softplus(raw) * g:  d/dw = grad,  d/dg = -lr * grad,
    # d/draw = -sigmoid(raw) * <grad, g>. Plain differentiable ops: double backward works
    # (the unroll engine differentiates through the inner step's gradient g).
    g, raw_lr = ctx.saved_tensors
    grad_w = grad if ctx.needs_input_grad[0] else None
    grad_g = -softplus(raw_lr) * grad if ctx.needs_input_grad[1] else None
    grad_raw = -torch.sigmoid(raw_lr) * _dot(grad, g) if ctx.needs_input_grad[2] else None
    return grad_w, grad_g, grad_raw


def _inner_update_vmap(info, in_dims, w, g, raw_lr):
    # The op is elementwise over any equal shapes: the vmapped dim becomes one more dim.
    w_dim, g_dim, raw_dim = in_dims
    n = info.batch_size
    w = w.movedim(w_dim, 0) if w_dim is not None else w.unsqueeze(0).expand(n, *w.shape)
    g = g.movedim(g_dim, 0) if g_dim is not None else g.unsqueeze(0).expand(n, *g.shape)
    if raw_dim is not None:  # one step size per vmapped slice: broadcasting math
        lr = softplus(raw_lr.movedim(raw_dim, 0)).reshape((n,) + (1,) * (w.dim() - 1))
        return w - lr * g, 0
    return torch.ops.fastdistill.inner_update(w, g, raw_lr), 0


# --------------------------------------------------------------------------- adjoint_update
def _adjoint_update_fake(v: Tensor, hv: Tensor, g: Tensor, raw_lr: Tensor):
    torch._check(hv.shape == v.shape, lambda: "fastdistill::adjoint_update: `hv` must match `v`")
    torch._check(g.shape == v.shape, lambda: "fastdistill::adjoint_update: `g` must match `v`")
    torch._check(raw_lr.dim() == 0, lambda: "fastdistill::adjoint_update: `raw_lr` must be 0-d")
    v_new = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    return v_new, v.new_empty(())


def _adjoint_update_setup_context(ctx, inputs, output) -> None:
    pass


def _adjoint_update_backward(ctx, grad_v_new, grad_dlr):
    raise RuntimeError(
        "fastdistill.ops.adjoint_update is not differentiable: it is one step of a hand-written "
        "reverse sweep (the adjoint engine). Differentiate through inner_update instead (the "
        "unroll engine), or call adjoint_update on detached tensors."
    )


# ------------------------------------------------------------------------ nearest_embedding
def _nearest_embedding_fake(
    queries: Tensor, table: Tensor, k: int, metric: str, table_norms: Tensor | None
):
    op = "fastdistill::nearest_embedding"
    torch._check(queries.dim() == 2, lambda: f"{op}: `queries` must be a 2-D tensor [N, D]")
    torch._check(table.dim() == 2, lambda: f"{op}: `table` must be a 2-D tensor [V, D]")
    torch._check(
        table.shape[1] == queries.shape[1],
        lambda: f"{op}: `table` must have as many columns as `queries`",
    )
    torch._check(
        1 <= k <= table.shape[0],
        lambda: f"{op}: k = {k} is out of range: need 1 <= k <= V = {table.shape[0]}",
    )
    n = queries.shape[0]
    values = queries.new_empty((n, k))
    indices = torch.empty((n, k), dtype=torch.int64, device=queries.device)
    return values, indices


def _nearest_embedding_setup_context(ctx, inputs, output) -> None:
    pass


def _nearest_embedding_backward(ctx, grad_values, grad_indices):
    raise RuntimeError(
        "fastdistill.ops.nearest_embedding is not differentiable: it selects table rows (the "
        "indices have no gradient). Call it on detached tensors or under torch.no_grad(); to "
        "differentiate a distance, recompute it from the returned indices, e.g. "
        "(queries - table[indices[:, 0]]).norm(dim=1)."
    )


def register_all() -> None:
    """Register fake kernels, autograd formulas and vmap rules (idempotent)."""
    global _done
    if _done:
        return
    lib = torch.library
    lib.register_fake("fastdistill::inner_update")(_inner_update_fake)
    lib.register_autograd(
        "fastdistill::inner_update",
        _inner_update_backward,
        setup_context=_inner_update_setup_context,
    )
    lib.register_fake("fastdistill::adjoint_update")(_adjoint_update_fake)
    lib.register_autograd(
        "fastdistill::adjoint_update",
        _adjoint_update_backward,
        setup_context=_adjoint_update_setup_context,
    )
    lib.register_fake("fastdistill::nearest_embedding")(_nearest_embedding_fake)
    lib.register_autograd(
        "fastdistill::nearest_embedding",
        _nearest_embedding_backward,
        setup_context=_nearest_embedding_setup_context,
    )
    if hasattr(lib, "register_vmap"):  # torch >= 2.5
        lib.register_vmap("fastdistill::inner_update")(_inner_update_vmap)
    _done = True
