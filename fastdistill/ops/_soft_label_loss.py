"""``fastdistill.ops.soft_label_loss``: per-example soft-label / softmax-target / binary inner
loss, kernel or reference, differentiable to second order on both paths."""

from __future__ import annotations

import torch
from torch import Tensor

from fastdistill.ops import _backend, _library, reference
from fastdistill.ops._common import rows_vmap

__all__ = ["soft_label_loss"]

_HALF_TYPES = (torch.float16, torch.bfloat16)
_OP = "soft_label_loss"


def _functorch_grad_active() -> bool:
    """Inside ``torch.func.grad``/``jacrev``/``jvp``/...? The autograd formulas of C++ ops
    registered with ``torch.library.register_autograd`` do not compose with those transforms
    (torch asks for an autograd.Function with ``setup_context``); ``vmap`` alone is fine."""
    get_stack = getattr(torch._C._functorch, "get_interpreter_stack", None)
    stack = get_stack() if get_stack is not None else None
    if not stack:
        return False
    vmap = torch._C._functorch.TransformType.Vmap
    return any(level.key() != vmap for level in stack)


def _functorch_fallback(device: torch.device) -> bool:
    """Use the reference under functorch's autograd transforms (recorded as the choice), or
    raise in ``kernels`` mode. Returns False (no kernel)."""
    reason = "torch.func autograd transform active (the kernel's autograd does not compose)"
    if _backend.get_backend() == "kernels":
        raise RuntimeError(f"fastdistill.ops.{_OP}: FASTDISTILL_BACKEND=kernels but {reason}")
    _backend.record(_OP, "reference", device, reason)
    return False


def soft_label_loss(logits: Tensor, labels: Tensor, kind: str = "soft") -> Tensor:
    """Per-example inner loss of distilled data (docs/algorithm.md §2), one fused pass per row.

    Args:
        logits: ``[N, K]`` float32 or float64 (float16/bfloat16 are computed in float32 and the
            losses returned in the input dtype). Any strides.
        labels: same dtype and device; ``[N, K]`` for ``soft``/``softmax``, ``[N]`` for
            ``binary``.
        kind: ``"soft"``: ``-sum_k y_k log_softmax(z)_k`` with the raw label row as weights
            (negative and >1 entries allowed); ``"softmax"``: the same with ``softmax(y)`` as the
            target; ``"binary"``: BCE-with-logits, ``logits [N, 1]``, one real label per row.

    Returns:
        ``[N]`` losses. Differentiable w.r.t. logits and labels; on the kernel path the first
        derivatives are the fused ``soft_label_loss_backward`` op and the second derivatives
        (Hessian-vector and mixed label products, what the adjoint engine needs) the fused
        ``soft_label_loss_double_backward`` op; higher orders go through the reference
        formulas. Works under ``torch.vmap`` (rows are independent); under ``torch.func``'s
        autograd transforms (``grad``, ``jacrev``, ...) it runs the reference.
    """
    out_dtype = logits.dtype if isinstance(logits, Tensor) else None
    if out_dtype in _HALF_TYPES:
        logits = logits.float()
        if isinstance(labels, Tensor) and labels.dtype == out_dtype:
            labels = labels.float()
    device = logits.device if isinstance(logits, Tensor) else torch.device("cpu")
    use_kernel = _backend.runs_kernel(_OP, device)
    if use_kernel and _functorch_grad_active():
        use_kernel = _functorch_fallback(device)
    if use_kernel:
        loss = torch.ops.fastdistill.soft_label_loss.default(logits, labels, kind)
    else:
        loss = reference.soft_label_loss(logits, labels, kind)
    return loss.to(out_dtype) if out_dtype in _HALF_TYPES else loss


# -- fake kernels, autograd formulas and vmap rules -------------------------------------------
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
    saved = ctx.saved_tensors
    needs = ctx.needs_input_grad[:5]
    if not any(needs):
        return (None,) * 6
    cotangents = tuple(
        torch.zeros_like(o) if c is None else c
        for c, o in zip(cotangents, (saved[0], saved[1], saved[2]))
    )
    _, vjp = torch.func.vjp(
        lambda *a: reference.soft_label_loss_double_backward(*a, ctx.kind), *saved
    )
    grads = vjp(cotangents)
    return (*(g if need else None for g, need in zip(grads, needs)), None)


@_library.on_load
def _register() -> None:
    lib = torch.library
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
    if hasattr(lib, "register_vmap"):  # torch >= 2.5
        ops = torch.ops.fastdistill
        lib.register_vmap(_SLL)(rows_vmap(ops.soft_label_loss.default, 2))
        lib.register_vmap(f"{_SLL}_backward")(rows_vmap(ops.soft_label_loss_backward.default, 3))
        lib.register_vmap(f"{_SLL}_double_backward")(
            rows_vmap(ops.soft_label_loss_double_backward.default, 5)
        )
