"""``fastdistill.ops.conv_pool_*``: conv2d + 2x2 max pool (+ ReLU) of B nets, fused.

The layer block ``Conv2d(stride 1) -> MaxPool2d(2) -> ReLU`` (LeNet's, in either activation
order) dominates the distillation hot path on small images. These ops compute it without the
full-resolution activation ever leaving the kernel: the forward pass returns the pooled values
and a one-byte code per window (which of its 4 positions was the maximum, or "inactive" where the
ReLU is off), and the backward pass and the tangent ("gather") use the codes to touch only the
winning positions. Layouts (``csrc/include/fastdistill/conv_pool.h``): ``x [N, G*Cin, H, W]``
with ``G`` 1 (input shared by all nets) or ``B``, ``w [B, Cout, Cin, KH, KW]``, ``b [B, Cout]``,
pooled tensors ``[N, B*Cout, HP, WP]``.

Kernels on CPU and CUDA (float32/float64); the pure-PyTorch reference elsewhere. The first three
ops are differentiable to any order (their derivatives are each other), fake (meta) kernels make
them traceable. ``conv_pool_backward_tangent`` (the backward and its tangent in one pass, for
the adjoint's Hessian-vector products) is a fused CPU kernel (three backward launches on CUDA)
and not differentiable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fastdistill.ops import _backend, _library
from fastdistill.ops._common import device_of
from fastdistill.ops.reference import conv_pool as ref

__all__ = [
    "conv_pool_backward",
    "conv_pool_backward_tangent",
    "conv_pool_forward",
    "conv_pool_gather",
]


def _use_kernel(op: str, t: object) -> bool:
    return _backend.runs_kernel(op, device_of(t))


def conv_pool_forward(
    x: Tensor, w: Tensor, b: Tensor | None, padding: Sequence[int], relu: bool = True
) -> tuple[Tensor, Tensor]:
    """``relu?(maxpool2x2(conv2d(x, w) + b))`` of B nets and the window codes (uint8: the
    argmax ``dy*2 + dx``, first maximum in scan order as ``max_pool2d``; 255 where the ReLU is
    off). ``padding`` is ``(ph, pw)``; stride and dilation are 1."""
    padding = [int(p) for p in padding]
    if _use_kernel("conv_pool_forward", x):
        return torch.ops.fastdistill.conv_pool_forward.default(x, w, b, padding, relu)
    return ref.conv_pool_forward(x, w, b, padding, relu)


def conv_pool_gather(
    x: Tensor, w: Tensor, b: Tensor | None, code: Tensor, padding: Sequence[int]
) -> Tensor:
    """``conv2d(x, w) + b`` at each window's coded position (0 where inactive): the tangent of
    ``conv_pool_forward``'s output along ``(x, w, b)``."""
    padding = [int(p) for p in padding]
    if _use_kernel("conv_pool_gather", x):
        return torch.ops.fastdistill.conv_pool_gather.default(x, w, b, code, padding)
    return ref.conv_pool_gather(x, w, b, code, padding)


def conv_pool_backward(
    grad: Tensor,
    x: Tensor,
    w: Tensor,
    code: Tensor,
    padding: Sequence[int],
    output_mask: Sequence[bool] = (True, True, True),
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(dx, dw, db)`` of ``conv_pool_forward`` given the gradient at the pooled outputs
    (positions with an inactive code carry none); ``dx`` is summed over nets when the input is
    shared. Outputs not in ``output_mask`` are None."""
    padding = [int(p) for p in padding]
    mask = [bool(m) for m in output_mask]
    if _use_kernel("conv_pool_backward", x):
        out = torch.ops.fastdistill.conv_pool_backward.default(grad, x, w, code, padding, mask)
    else:
        out = ref.conv_pool_backward(grad, x, w, code, padding, mask)
    return tuple(t if m else None for t, m in zip(out, mask))  # type: ignore[return-value]


def conv_pool_backward_tangent(
    grad: Tensor,
    grad_t: Tensor,
    x: Tensor,
    x_t: Tensor | None,
    w: Tensor,
    w_t: Tensor,
    code: Tensor,
    padding: Sequence[int],
    output_mask: Sequence[bool] = (True, True, True, True),
) -> tuple[Tensor, ...]:
    """``conv_pool_backward`` and its tangent along ``(grad_t, x_t, w_t)``:
    ``(dx, dw, db, dx_t, dw_t, db_t)`` with ``dx_t = D(grad_t, w) + D(grad, w_t)``,
    ``dw_t = Wg(grad_t, x) + Wg(grad, x_t)``, ``db_t = sum grad_t`` (the window codes have no
    tangent). ``output_mask`` is ``(dx, dx_t, both bias gradients, dw and db)`` (a 3-entry mask
    means dw and db as well); unmasked outputs come back empty. One pass over the images on the
    CPU: each image's planes are filled and gradients scattered once for both products, where
    three backward calls would repeat them."""
    padding = [int(p) for p in padding]
    mask = [bool(m) for m in output_mask]
    if len(mask) == 3:
        mask.append(True)
    if len(mask) != 4:
        raise ValueError(
            f"conv_pool_backward_tangent: output_mask needs 4 entries (dx, dx_t, biases, dw), "
            f"got {len(mask)}"
        )
    args = (grad, grad_t, x, x_t, w, w_t, code, padding, mask)
    if _use_kernel("conv_pool_backward_tangent", x):
        return tuple(torch.ops.fastdistill.conv_pool_backward_tangent.default(*args))
    return ref.conv_pool_backward_tangent(*args)


# -- fake kernels and autograd formulas --------------------------------------------------------
def _dims(op: str, x: Tensor, w: Tensor, b: Tensor | None, padding) -> ref.ConvPoolDims:
    torch._check(x.dim() == 4, lambda: f"{op}: `x` must be 4-D [N, G*Cin, H, W]")
    torch._check(w.dim() == 5, lambda: f"{op}: `w` must be 5-D [B, Cout, Cin, KH, KW]")
    B, Cout, Cin, KH, KW = w.shape
    N, XC, H, W = x.shape
    torch._check(
        Cin == XC or Cin * B == XC,
        lambda: f"{op}: `x` must have Cin (shared input) or B*Cin (one input per net) channels",
    )
    HO, WO = H + 2 * padding[0] - KH + 1, W + 2 * padding[1] - KW + 1
    torch._check(HO >= 2 and WO >= 2, lambda: f"{op}: the convolution output must be >= 2x2")
    G = 1 if Cin == XC else B
    ph, pw = padding[0], padding[1]
    return ref.ConvPoolDims(N, G, B, Cin, H, W, Cout, KH, KW, ph, pw, HO // 2, WO // 2)


def _forward_fake(x, w, b, padding, relu):
    d = _dims("fastdistill::conv_pool_forward", x, w, b, padding)
    shape = (d.N, d.B * d.Cout, d.HP, d.WP)
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.uint8)


def _gather_fake(x, w, b, code, padding):
    _dims("fastdistill::conv_pool_gather", x, w, b, padding)
    return x.new_empty(code.shape)


def _backward_fake(grad, x, w, code, padding, output_mask):
    _dims("fastdistill::conv_pool_backward", x, w, None, padding)
    empty = (0,)
    return (
        x.new_empty(x.shape if output_mask[0] else empty),
        x.new_empty(w.shape if output_mask[1] else empty),
        x.new_empty((w.shape[0], w.shape[1]) if output_mask[2] else empty),
    )


def _backward_tangent_fake(grad, grad_t, x, x_t, w, w_t, code, padding, output_mask):
    _dims("fastdistill::conv_pool_backward_tangent", x, w, None, padding)
    empty = (0,)
    bias = (w.shape[0], w.shape[1]) if output_mask[2] else empty
    primal = output_mask[3]
    return (
        x.new_empty(x.shape if output_mask[0] else empty),
        x.new_empty(w.shape if primal else empty),
        x.new_empty(bias if primal else empty),
        x.new_empty(x.shape if output_mask[1] else empty),
        x.new_empty(w.shape),
        x.new_empty(bias),
    )


_ops = torch.ops.fastdistill


def _bwd(grad, x, w, code, padding, mask):
    return _ops.conv_pool_backward.default(grad, x, w, code, padding, mask)


def _forward_setup(ctx, inputs, output) -> None:
    x, w, _b, padding, _ = inputs
    ctx.padding = padding
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, w, output[1])


def _forward_backward(ctx, grad_out, _grad_code):
    # The ReLU mask and the pooling are both in the codes: the same backward as the gather's.
    return _gather_backward(ctx, grad_out)


def _gather_setup(ctx, inputs, output) -> None:
    x, w, _b, code, padding = inputs
    ctx.padding = padding
    ctx.save_for_backward(x, w, code)


def _gather_backward(ctx, grad_out):
    """d/d(x, w, b) of the pooled map through the stored codes: the backward op."""
    x, w, code = ctx.saved_tensors
    need = list(ctx.needs_input_grad[:3])
    if not any(need):
        return None, None, None, None, None
    grads = _bwd(grad_out, x, w, code, ctx.padding, need)
    return (*(g if n else None for g, n in zip(grads, need)), None, None)


def _backward_setup(ctx, inputs, output) -> None:
    grad, x, w, code, padding, mask = inputs
    ctx.padding, ctx.mask = padding, mask
    ctx.save_for_backward(grad, x, w, code)


def _backward_backward(ctx, g_dx, g_dw, g_db):
    # dx = D(grad, w), dw = Wg(x, grad), db = sum(grad): bilinear, so each cotangent maps back
    # through gather (the forward-direction product) or the backward op itself.
    grad, x, w, code = ctx.saved_tensors
    mask, padding = ctx.mask, ctx.padding
    need_grad, need_x, need_w = ctx.needs_input_grad[:3]
    use_dx = mask[0] and g_dx is not None
    use_dw = mask[1] and g_dw is not None
    use_db = mask[2] and g_db is not None
    d_grad = d_x = d_w = None
    if need_grad:
        d_grad = torch.zeros_like(grad)
        if use_dx:
            d_grad = d_grad + _ops.conv_pool_gather.default(g_dx, w, None, code, padding)
        if use_dw:
            d_grad = d_grad + _ops.conv_pool_gather.default(x, g_dw, None, code, padding)
        if use_db:
            B, Cout = w.shape[:2]
            per = g_db.reshape(1, B * Cout, 1, 1).expand_as(grad)
            d_grad = d_grad + torch.where(code != ref.INACTIVE, per, torch.zeros_like(per))
    if need_x and use_dw:
        d_x = _bwd(grad, x, g_dw, code, padding, [True, False, False])[0]
    if need_w and use_dx:
        d_w = _bwd(grad, g_dx, w, code, padding, [False, True, False])[1]
    return d_grad, d_x, d_w, None, None, None


@_library.on_load
def _register() -> None:
    lib = torch.library
    lib.register_fake("fastdistill::conv_pool_forward")(_forward_fake)
    lib.register_fake("fastdistill::conv_pool_gather")(_gather_fake)
    lib.register_fake("fastdistill::conv_pool_backward")(_backward_fake)
    lib.register_fake("fastdistill::conv_pool_backward_tangent")(_backward_tangent_fake)
    lib.register_autograd(
        "fastdistill::conv_pool_forward", _forward_backward, setup_context=_forward_setup
    )
    lib.register_autograd(
        "fastdistill::conv_pool_gather", _gather_backward, setup_context=_gather_setup
    )
    lib.register_autograd(
        "fastdistill::conv_pool_backward", _backward_backward, setup_context=_backward_setup
    )
