"""Initial-weight distributions ``p(w0)``, drawn for B nets at once into a ``[B, P]`` buffer.

Schemes: ``xavier`` (the paper: Xavier-normal weights, zero biases), ``kaiming`` (Kaiming-normal
for ReLU nets, zero biases) and ``default`` (what ``torch.nn`` layers do on construction). Norm
layers start at weight 1, bias 0 in every scheme. Draws come from an explicit generator so runs
are reproducible and resumable.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from torch import Tensor, nn

from fastdistill.engine.functional import FlatModel, fan_in_out

InitScheme = Literal["xavier", "kaiming", "default"]
INIT_SCHEMES: tuple[str, ...] = ("xavier", "kaiming", "default")

_NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)
_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd, nn.RNNBase)


def _owners(module: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    out = {}
    for prefix, sub in module.named_modules():
        for pname, _ in sub.named_parameters(recurse=False):
            out[f"{prefix}.{pname}" if prefix else pname] = (sub, pname)
    return out


def sample_weights(
    model: FlatModel,
    n: int,
    *,
    scheme: InitScheme = "xavier",
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw ``n`` independent initial weight vectors, ``[n, P]``, on the generator's device."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {INIT_SCHEMES}")
    if n < 1:
        raise ValueError(f"need at least one net, got n={n}")
    device = generator.device if generator is not None else torch.device("cpu")
    out = torch.empty(n, model.num_params, device=device, dtype=dtype)
    owners = _owners(model.module)
    params = dict(model.module.named_parameters())
    for name, sl, shape in model.param_slices():
        sub, pname = owners[name]
        view = out[:, sl].view(n, *shape)
        if isinstance(sub, _NORMS):
            view.fill_(1.0 if pname == "weight" else 0.0)
        elif isinstance(sub, _WEIGHTED):
            _init_weighted(view, sub, pname, shape, scheme, gain, generator)
        else:
            _init_by_reset(view, sub, pname, params[name], generator)
    return out


def _init_weighted(
    view: Tensor,
    sub: nn.Module,
    pname: str,
    shape: tuple[int, ...],
    scheme: str,
    gain: float,
    gen: torch.Generator | None,
) -> None:
    is_weight = pname.startswith("weight") and len(shape) >= 2
    if isinstance(sub, nn.RNNBase) and scheme == "default":
        bound = 1.0 / math.sqrt(sub.hidden_size)
        view.uniform_(-bound, bound, generator=gen)
    elif scheme == "default":
        weight = sub.weight if hasattr(sub, "weight") else None
        fan_in = fan_in_out(tuple(weight.shape))[0] if weight is not None else shape[-1]
        # nn.Linear/Conv: kaiming_uniform(a=sqrt(5)) for weights == U(-1/sqrt(fan_in), ...),
        # and the same bound for biases.
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        view.uniform_(-bound, bound, generator=gen)
    elif not is_weight:
        view.zero_()
    elif scheme == "xavier":
        fan_in, fan_out = fan_in_out(shape)
        view.normal_(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator=gen)
    else:  # kaiming, fan_in, ReLU gain sqrt(2) scaled by ``gain``
        fan_in, _ = fan_in_out(shape)
        view.normal_(0.0, gain * math.sqrt(2.0 / fan_in), generator=gen)


def _init_by_reset(
    view: Tensor, sub: nn.Module, pname: str, param: Tensor, gen: torch.Generator | None
) -> None:
    """Fallback for modules we do not know: their own ``reset_parameters``, once per net."""
    if not hasattr(sub, "reset_parameters"):
        view.copy_(param.detach().expand_as(view))
        return
    seeds = torch.randint(0, 2**62, (view.shape[0],), generator=gen, device=view.device).tolist()
    for i, seed in enumerate(seeds):
        clone = copy.deepcopy(sub)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clone.reset_parameters()
        view[i].copy_(getattr(clone, pname).detach())
