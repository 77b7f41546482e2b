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


# -------------------------------------------------------------------------- soft_label_loss
_SLL = "fastdistill::soft_label_loss"


def _soft_label_loss_shapes(op: str, logits: Tensor, labels: Tensor, kind: str) -> None:
    torch._check(logits.dim() == 2, lambda: f"{op}: `logits` must be a 2-D tensor [N, K]")
    torch._check(
        kind in ("soft", "softmax", "binary"),
        lambda: f"{op}: `kind` must be 'soft', 'softmax' or 'binary', got {kind!r}",
    )
    if kind == "binary":
        torch._check(logits.shape[1] == 1, lambda: f"{op}: `logits` must have shape [N, 1]")
        torch._check(
            labels.dim() == 1 and labels.shape[0] == logits.shape[0],
            lambda: f"{op}: `labels` must have shape [N]",
        )
    else:
        torch._check(labels.shape == logits.shape, lambda: f"{op}: `labels` must match `logits`")


def _soft_label_loss_fake(logits: Tensor, labels: Tensor, kind: str) -> Tensor:
    _soft_label_loss_shapes(_SLL, logits, labels, kind)
    return logits.new_empty((logits.shape[0],))


def _soft_label_loss_backward_fake(grad: Tensor, logits: Tensor, labels: Tensor, kind: str):
    _soft_label_loss_shapes(f"{_SLL}_backward", logits, labels, kind)
    return logits.new_empty(logits.shape), labels.new_empty(labels.shape)


def _soft_label_loss_double_backward_fake(
    grad: Tensor, logits: Tensor, labels: Tensor, gg_logits: Tensor, gg_labels: Tensor, kind: str
):
    _soft_label_loss_shapes(f"{_SLL}_double_backward", logits, labels, kind)
    return (
        grad.new_empty(grad.shape),
        logits.new_empty(logits.shape),
        labels.new_empty(labels.shape),
    )


def _soft_label_loss_setup_context(ctx, inputs, output) -> None:
    logits, labels, kind = inputs
    ctx.kind = kind
    ctx.save_for_backward(logits, labels)


def _soft_label_loss_backward(ctx, grad: Tensor):
    # d loss / d(logits, labels): the fused backward op, itself differentiable (below), so that
    # autograd.grad(..., create_graph=True) and the adjoint sweep's Hessian-vector products
    # run the fused kernels too.
    logits, labels = ctx.saved_tensors
    need_z, need_y = ctx.needs_input_grad[:2]
    if not (need_z or need_y):
        return None, None, None
    gz, gy = torch.ops.fastdistill.soft_label_loss_backward.default(grad, logits, labels, ctx.kind)
    return (gz if need_z else None), (gy if need_y else None), None


def _soft_label_loss_backward_setup_context(ctx, inputs, output) -> None:
    grad, logits, labels, kind = inputs
    ctx.kind = kind
    ctx.save_for_backward(grad, logits, labels)


def _soft_label_loss_backward_backward(ctx, gg_logits: Tensor, gg_labels: Tensor):
    # Second derivatives: the vector-Jacobian product of the backward op (fused kernel).
    grad, logits, labels = ctx.saved_tensors
    needs = ctx.needs_input_grad[:3]
    if not any(needs):
        return None, None, None, None
    gg_logits = torch.zeros_like(logits) if gg_logits is None else gg_logits
    gg_labels = torch.zeros_like(labels) if gg_labels is None else gg_labels
    out = torch.ops.fastdistill.soft_label_loss_double_backward.default(
        grad, logits, labels, gg_logits, gg_labels, ctx.kind
    )
    return (*(t if need else None for t, need in zip(out, needs)), None)


def _soft_label_loss_double_backward_setup_context(ctx, inputs, output) -> None:
    *tensors, kind = inputs
    ctx.kind = kind
    ctx.save_for_backward(*tensors)


def _soft_label_loss_double_backward_backward(ctx, *cotangents: Tensor):
    # Third and higher derivatives (never on the hot path): through the reference's closed
    # forms, which are plain differentiable PyTorch.
    from fastdistill.ops.reference import soft_label_loss_double_backward

    saved = ctx.saved_tensors
    needs = ctx.needs_input_grad[:5]
    if not any(needs):
        return (None,) * 6
    cotangents = tuple(
        torch.zeros_like(o) if c is None else c
        for c, o in zip(cotangents, (saved[0], saved[1], saved[2]))
    )
    _, vjp = torch.func.vjp(lambda *a: soft_label_loss_double_backward(*a, ctx.kind), *saved)
    grads = vjp(cotangents)
    return (*(g if need else None for g, need in zip(grads, needs)), None)


def _rows_vmap(op, num_tensors: int):
    """vmap rule of a row-wise op whose first ``num_tensors`` arguments all have the rows as
    dim 0: the vmapped dim is folded into the rows (rows are independent)."""

    def rule(info, in_dims, *args):
        n = info.batch_size
        tensors = []
        for t, d in zip(args[:num_tensors], in_dims[:num_tensors]):
            tensors.append(t.movedim(d, 0) if d is not None else t.unsqueeze(0).expand(n, *t.shape))
        rows = tensors[0].shape[1]
        flat = [t.reshape(n * rows, *t.shape[2:]) for t in tensors]
        out = op(*flat, *args[num_tensors:])
        if isinstance(out, Tensor):
            return out.reshape(n, rows, *out.shape[1:]), 0
        return tuple(o.reshape(n, rows, *o.shape[1:]) for o in out), (0,) * len(out)

    return rule


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
    lib.register_fake(_SLL)(_soft_label_loss_fake)
    lib.register_fake(f"{_SLL}_backward")(_soft_label_loss_backward_fake)
    lib.register_fake(f"{_SLL}_double_backward")(_soft_label_loss_double_backward_fake)
    lib.register_autograd(
        _SLL, _soft_label_loss_backward, setup_context=_soft_label_loss_setup_context
    )
    lib.register_autograd(
        f"{_SLL}_backward",
        _soft_label_loss_backward_backward,
        setup_context=_soft_label_loss_backward_setup_context,
    )
    lib.register_autograd(
        f"{_SLL}_double_backward",
        _soft_label_loss_double_backward_backward,
        setup_context=_soft_label_loss_double_backward_setup_context,
    )
    from fastdistill.ops._conv_pool import register as _register_conv_pool

    _register_conv_pool(lib)
    if hasattr(lib, "register_vmap"):  # torch >= 2.5
        lib.register_vmap("fastdistill::inner_update")(_inner_update_vmap)
        ops = torch.ops.fastdistill
        lib.register_vmap(_SLL)(_rows_vmap(ops.soft_label_loss.default, 2))
        lib.register_vmap(f"{_SLL}_backward")(_rows_vmap(ops.soft_label_loss_backward.default, 3))
        lib.register_vmap(f"{_SLL}_double_backward")(
            _rows_vmap(ops.soft_label_loss_double_backward.default, 5)
        )
    _done = True
