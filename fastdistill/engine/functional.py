"""Run an ordinary ``nn.Module`` on a flat parameter buffer, for one net or a batch of nets.

Every net of a batch is a row of one ``[B, P]`` tensor, so the inner update, the adjoint
accumulation and the batching over nets are each one contiguous operation. The forward pass of
B nets is one ``vmap``-ed ``functional_call`` (convolutions become one grouped convolution), not a
Python loop over nets.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

_FIRST_ORDER: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "fastdistill_first_order", default=False
)


@contextmanager
def first_order() -> Iterator[None]:
    """Promise that nothing computed inside is differentiated twice: recurrent models may then
    run torch's fused RNN kernels (cuDNN's have no double backward)."""
    token = _FIRST_ORDER.set(True)
    try:
        yield
    finally:
        _FIRST_ORDER.reset(token)


def first_order_active() -> bool:
    """Inside :func:`first_order`."""
    return _FIRST_ORDER.get()


_STOCHASTIC = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


class FlatModel:
    """A module plus the layout of its parameters inside a flat ``[P]`` buffer.

    The layout is module order (``named_parameters``), each tensor flattened row-major: the same
    convention as the original code's flat weights, so its buffers can be used directly.
    """

    def __init__(self, module: nn.Module) -> None:
        if any(b is not None and b.requires_grad for b in module.buffers()):
            raise ValueError("buffers that require grad are not supported")
        self.module = module
        self._buffers = dict(module.named_buffers())
        named = list(module.named_parameters())
        if not named:
            raise ValueError(f"{type(module).__name__} has no parameters to train")
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.num_params = sum(self.numels)
        self.stochastic = any(isinstance(m, _STOCHASTIC) and m.p > 0 for m in module.modules())
        self._has_batchnorm = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()
        )
        if self._has_batchnorm:
            # Running statistics would be shared (and corrupted) across the nets of a batch.
            torch.func.replace_all_batch_norm_modules_(module)
            self._buffers = dict(module.named_buffers())

    # -- layout -------------------------------------------------------------------------------
    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Views of one net's ``[P]`` buffer shaped like the module's parameters."""
        if flat.shape[-1] != self.num_params:
            raise ValueError(
                f"flat parameters have {flat.shape[-1]} entries, the model needs {self.num_params}"
            )
        chunks = torch.split(flat, self.numels, dim=-1)
        lead = flat.shape[:-1]
        return {n: c.reshape(*lead, *s) for n, c, s in zip(self.names, chunks, self.shapes)}

    def flatten_module(self) -> Tensor:
        """The module's current parameters as one ``[P]`` buffer."""
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()])

    def param_slices(self) -> Iterator[tuple[str, slice, tuple[int, ...]]]:
        start = 0
        for name, numel, shape in zip(self.names, self.numels, self.shapes):
            yield name, slice(start, start + numel), shape
            start += numel

    # -- forward ------------------------------------------------------------------------------
    def _call(self, flat: Tensor, x: Tensor) -> Tensor:
        params = self.unflatten(flat)
        if self._buffers:
            params = {**params, **self._buffers}
        return functional_call(self.module, params, (x,))

    def forward(self, w: Tensor, x: Tensor, *, train: bool, batched_input: bool = False) -> Tensor:
        """Logits of B nets: ``w`` is ``[B, P]``; ``x`` is ``[N, ...]`` shared by all nets, or
        ``[B, N, ...]`` when ``batched_input``. Returns ``[B, N, K]``.
        """
        if w.dim() != 2:
            raise ValueError(f"expected flat parameters of shape [B, P], got {tuple(w.shape)}")
        with _mode(self.module, train):
            if w.shape[0] == 1:  # one net: skip vmap's per-op overhead
                xs = x[0] if batched_input else x
                return self._call(w[0], xs).unsqueeze(0)
            return vmap(
                self._call,
                in_dims=(0, 0 if batched_input else None),
                randomness="different",
            )(w, x)

    def __repr__(self) -> str:
        return f"FlatModel({type(self.module).__name__}, P={self.num_params})"


@contextmanager
def _mode(module: nn.Module, train: bool) -> Iterator[None]:
    if module.training == train:
        yield
        return
    module.train(train)
    try:
        yield
    finally:
        module.train(not train)


def fan_in_out(shape: tuple[int, ...]) -> tuple[int, int]:
    """Fan-in and fan-out of a weight of this shape, as ``torch.nn.init`` computes them."""
    if len(shape) < 2:
        return shape[0], shape[0]
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive
