"""Hand-derived inner-step gradients and Hessian-vector products of common layer stacks.

``layers`` (the layer kinds) -> ``plan`` (a model -> its layer steps) -> ``run`` (one
forward-over-reverse pass over a plan) and ``losses``; ``step`` (the adjoint engine's entry
points and the choice of path per call); ``autograd`` (the fallback and oracle).
"""

from fastdistill.engine.fused.autograd import (
    autograd_inner_grad,
    autograd_inner_hvp,
    autograd_outer_value_and_grad,
)
from fastdistill.engine.fused.layers import LayerKind, Unsupported
from fastdistill.engine.fused.plan import Plan, build_plan, cached_plan
from fastdistill.engine.fused.step import (
    Tape,
    describe,
    fused_enabled,
    inner_grad,
    inner_grad_record,
    inner_hvp,
    inner_hvp_replay,
    outer_value_and_grad,
    set_fused,
    uses_fused,
)

__all__ = [
    "LayerKind",
    "Plan",
    "Tape",
    "Unsupported",
    "autograd_inner_grad",
    "autograd_inner_hvp",
    "autograd_outer_value_and_grad",
    "build_plan",
    "cached_plan",
    "describe",
    "fused_enabled",
    "inner_grad",
    "inner_grad_record",
    "inner_hvp",
    "inner_hvp_replay",
    "outer_value_and_grad",
    "set_fused",
    "uses_fused",
]
