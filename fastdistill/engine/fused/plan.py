"""A model -> its fused plan: the list of layer steps, where each one's parameters sit in the
flat ``[B, P]`` buffer, and the record list of the one-call C++ step.

Models are ``nn.Sequential`` stacks (nested ones are flattened) or modules that expose their
structure with ``fused_layers()`` (a list of ``(qualified name, module)``, see
``fastdistill.models.image.LeNet``), built from Linear, Conv1d/Conv2d (zero padding), ReLU, Tanh,
MaxPool1d/2d, AvgPool1d/2d, Flatten, GroupNorm / InstanceNorm (without running statistics),
Identity and Dropout(p=0). Anything else raises :class:`Unsupported` with the reason.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fastdistill.engine.functional import FlatModel
from fastdistill.engine.fused.layers import (
    LayerKind,
    Unsupported,
    _AvgPool,
    _Conv,
    _ConvPool,
    _Flatten,
    _GroupNorm,
    _Layer,
    _Linear,
    _MaxPool,
    _ReLU,
    _Tanh,
)

__all__ = ["Plan", "build_plan", "cached_plan"]

log = logging.getLogger("fastdistill.engine.fused")


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
            spec += [LayerKind.CONV_POOL, w_off, b_off, *shape, *layer.conv.padding]
            spec.append(int(layer.relu))
        elif isinstance(layer, _Linear):
            (w_off, _, shape), *rest = layer.slices
            spec += [LayerKind.LINEAR, w_off, rest[0][0] if rest else -1, *shape]
        elif isinstance(layer, _Flatten):
            spec.append(LayerKind.FLATTEN)
        elif isinstance(layer, _ReLU):
            spec.append(LayerKind.RELU)
        elif isinstance(layer, _Tanh):
            spec.append(LayerKind.TANH)
        else:
            return None
    return [int(s) for s in spec]


def _pair(v: Any, n: int = 2) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


Slices = tuple[tuple[int, int, tuple[int, ...]], ...]
Index = dict[str, tuple[int, int, tuple[int, ...]]]


def _slices(name: str, index: Index, *pnames: str) -> Slices:
    """Where the named parameters of layer ``name`` sit in the flat buffer."""
    out = []
    for p in pnames:
        key = f"{name}.{p}" if name else p
        if key not in index:
            raise Unsupported(f"parameter {key} not found in the flat layout")
        out.append(index[key])
    return tuple(out)


def _weights(name: str, index: Index, has_bias: bool) -> Slices:
    return _slices(name, index, "weight", "bias") if has_bias else _slices(name, index, "weight")


def _linear(name: str, m: nn.Linear, index: Index) -> _Layer:
    has_b = m.bias is not None
    return _Linear(_weights(name, index, has_b), bias=has_b)


def _conv(name: str, m: nn.Conv1d | nn.Conv2d, index: Index) -> _Layer:
    if m.padding_mode != "zeros" or m.transposed:
        raise Unsupported(f"{name}: padding_mode {m.padding_mode!r}")
    n = 1 if type(m) is nn.Conv1d else 2
    padding = m.padding
    if isinstance(padding, str):
        if padding != "valid":
            raise Unsupported(f"{name}: padding={padding!r}")
        padding = (0,) * n
    has_b = m.bias is not None
    return _Conv(
        _weights(name, index, has_b),
        bias=has_b, stride=_pair(m.stride, n), padding=_pair(padding, n),
        dilation=_pair(m.dilation, n), groups=m.groups,
    )  # fmt: skip


def _pool_geometry(m: nn.Module, one: bool, with_dilation: bool) -> tuple[tuple[int, ...], ...]:
    """Kernel, stride, padding (and dilation) as 2-d tuples (1-d pools get a unit first dim)."""
    n = 1 if one else 2
    k = _pair(m.kernel_size, n)
    s = _pair(m.stride if m.stride is not None else m.kernel_size, n)
    p = _pair(m.padding, n)
    out = [k, s, p] + ([_pair(m.dilation, n)] if with_dilation else [])
    if one:
        out = [(fill, *t) for fill, t in zip((1, 1, 0, 1), out)]
    return tuple(out)


def _max_pool(name: str, m: nn.MaxPool1d | nn.MaxPool2d, index: Index) -> _Layer:
    if m.return_indices:
        raise Unsupported(f"{name}: return_indices")
    one = type(m) is nn.MaxPool1d
    k, s, p, d = _pool_geometry(m, one, with_dilation=True)
    return _MaxPool(kernel=k, stride=s, padding=p, dilation=d, ceil_mode=m.ceil_mode, one_d=one)


def _avg_pool(name: str, m: nn.AvgPool1d | nn.AvgPool2d, index: Index) -> _Layer:
    one = type(m) is nn.AvgPool1d
    k, s, p = _pool_geometry(m, one, with_dilation=False)
    return _AvgPool(
        kernel=k, stride=s, padding=p, ceil_mode=m.ceil_mode,
        count_include_pad=m.count_include_pad,
        divisor_override=None if one else m.divisor_override, one_d=one,
    )  # fmt: skip


def _flatten(name: str, m: nn.Flatten, index: Index) -> _Layer:
    if m.start_dim != 1 or m.end_dim != -1:
        raise Unsupported(f"{name}: Flatten({m.start_dim}, {m.end_dim})")
    return _Flatten()


def _group_norm(name: str, m: nn.GroupNorm, index: Index) -> _Layer:
    return _GroupNorm(
        _slices(name, index, "weight", "bias") if m.affine else (),
        num_groups=m.num_groups, eps=m.eps, affine=m.affine,
    )  # fmt: skip


def _instance_norm(name: str, m: nn.InstanceNorm1d | nn.InstanceNorm2d, index: Index) -> _Layer:
    if m.track_running_stats:
        raise Unsupported(f"{name}: instance norm with running statistics")
    return _GroupNorm(
        _slices(name, index, "weight", "bias") if m.affine else (),
        num_groups=m.num_features, eps=m.eps, affine=m.affine,
    )  # fmt: skip


_BUILDERS = {
    nn.Linear: _linear,
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.ReLU: lambda name, m, index: _ReLU(),
    nn.Tanh: lambda name, m, index: _Tanh(),
    nn.MaxPool1d: _max_pool,
    nn.MaxPool2d: _max_pool,
    nn.AvgPool1d: _avg_pool,
    nn.AvgPool2d: _avg_pool,
    nn.Flatten: _flatten,
    nn.GroupNorm: _group_norm,
    nn.InstanceNorm1d: _instance_norm,
    nn.InstanceNorm2d: _instance_norm,
}


def _layer(name: str, m: nn.Module, index: Index) -> _Layer | None:
    """The fused layer of module ``m`` (None for a no-op), or raise Unsupported."""
    kind = type(m)
    if kind is nn.Identity or (kind is nn.Dropout and m.p == 0):
        return None
    build = _BUILDERS.get(kind)
    if build is None:
        raise Unsupported(f"{name or 'layer'}: {kind.__name__} has no fused implementation")
    return build(name, m, index)


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


def _sequence(prefix: str, m: nn.Module) -> list[tuple[str, nn.Module]]:
    """Children of ``m`` as (qualified name, leaf), nested ``nn.Sequential`` flattened."""
    out = []
    for name, sub in m._modules.items():  # not named_children(): it drops repeats
        if sub is None:
            continue
        full = f"{prefix}{name}"
        if type(sub) is nn.Sequential:
            out += _sequence(full + ".", sub)
        else:
            out.append((full, sub))
    return out


def _children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The module as a flat sequence of (qualified name, leaf module), or raise Unsupported."""
    if type(module) is nn.Sequential:
        return _sequence("", module)
    fused_layers = getattr(module, "fused_layers", None)
    if not callable(fused_layers):
        raise Unsupported(
            f"{type(module).__name__} is not an nn.Sequential and has no fused_layers()"
        )
    out: list[tuple[str, nn.Module]] = []
    for name, sub in fused_layers():
        if type(sub) is nn.Sequential:
            out += _sequence(f"{name}." if name else "", sub)
        else:
            out.append((name, sub))
    return out


_plans: weakref.WeakKeyDictionary[FlatModel, Plan | str] = weakref.WeakKeyDictionary()


def cached_plan(model: FlatModel) -> Plan | str:
    """The model's plan (built once), or the reason there is none."""
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
