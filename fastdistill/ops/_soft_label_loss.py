"""``fastdistill.ops.soft_label_loss``: per-example soft-label / softmax-target / binary inner
loss, kernel or reference, differentiable to second order on both paths."""

from __future__ import annotations

import torch
from torch import Tensor

from fastdistill import _extension
from fastdistill.ops import reference

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
    if _extension.get_backend() == "kernels":
        raise RuntimeError(f"fastdistill.ops.{_OP}: FASTDISTILL_BACKEND=kernels but {reason}")
    _extension._last[_OP] = _extension.BackendChoice(_OP, "reference", device.type, reason)
    return False


def soft_label_loss(logits: Tensor, labels: Tensor, kind: str = "soft") -> Tensor:
    """Per-example inner loss of distilled data (SPEC §2), one fused pass per row.

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
    use_kernel = _extension.choose(_OP, device).backend == "kernel"
    if use_kernel and _functorch_grad_active():
        use_kernel = _functorch_fallback(device)
    if use_kernel:
        loss = torch.ops.fastdistill.soft_label_loss.default(logits, labels, kind)
    else:
        loss = reference.soft_label_loss(logits, labels, kind)
    return loss.to(out_dtype) if out_dtype in _HALF_TYPES else loss
