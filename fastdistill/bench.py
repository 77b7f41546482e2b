"""``fastdistill bench``: seconds per outer iteration on the named shapes we are judged on.

The shapes are those of the original code's configurations that ``benchmarks/RESULTS.md``
compares against (the same T, distilled samples, nets per iteration, real batch, dtype): one outer
iteration is one hypergradient on a fixed real batch plus the Adam step on (data, step sizes,
labels), as the original's training loop body. Data are synthetic tensors of the right shapes
(speed does not depend on their values).

* ``A`` LeNet, fixed init, 10 images per step, 10 steps x 3 epochs (T=30), soft labels;
* ``B`` LeNet, fixed init, 1 step x 3 epochs (T=3), the paper's 10-image MNIST row;
* ``C`` LeNet, random init, 4 nets per iteration, T=30;
* ``D`` AlexCifarNet, fixed init, T=30;
* ``E`` IMDB TextConvNet, length 400, 100-d, 10 steps x 2 sentences x 3 epochs, binary;
* ``F`` TREC-6 Bi-LSTM, length 30, 100-d, 120 sentences, T=2.

The real batch is 1024 examples (the original's default). The original's text models also learn
their embedding table (it is part of their flat weights); fastdistill's run on embedded
sentences, so E and F do less work here than the original does: ``benchmarks/RESULTS.md`` says
how the comparison accounts for it.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from fastdistill import ops
from fastdistill.engine import FlatModel, hypergradient, sample_weights
from fastdistill.engine.fused import describe
from fastdistill.models import AlexCifarNet, BiLSTM, LeNet, TextConvNet
from fastdistill.utils.memory import peak_memory

__all__ = ["SHAPES", "BenchResult", "Shape", "bench_shape", "make_problem"]


@dataclass(frozen=True)
class Shape:
    name: str
    about: str
    nets: int = 1
    random_init: bool = False


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape("A", "LeNet fixed init, 10 images/step, T=30"),
        Shape("B", "LeNet fixed init, 10 images, T=3"),
        Shape("C", "LeNet random init, 4 nets, T=30", nets=4, random_init=True),
        Shape("D", "AlexCifarNet fixed init, 10 images/step, T=30"),
        Shape("E", "IMDB TextConvNet L=400 D=100, 10 steps x 2 sentences, T=30"),
        Shape("F", "TREC-6 Bi-LSTM L=30 D=100, 120 sentences, T=2"),
    )
}


@dataclass
class Problem:
    """Everything one outer iteration needs."""

    model: FlatModel
    w0: Tensor
    data: Tensor
    labels: Tensor
    raw_lrs: Tensor
    real_x: Tensor
    real_y: Tensor
    kind: str
    nets: int
    random_init: bool
    generator: torch.Generator = field(repr=False)


def make_problem(name: str, real_batch: int = 1024, device: str = "cpu") -> Problem:
    """The tensors of shape ``name`` (seeded synthetic data)."""
    if name not in SHAPES:
        raise ValueError(f"unknown bench shape {name!r}; choose from {', '.join(SHAPES)}")
    shape = SHAPES[name]
    gen = torch.Generator().manual_seed(0)
    dev = torch.device(device)
    kind = "soft"
    if name in "ABCD":
        ctor, c, size = (AlexCifarNet, 3, 32) if name == "D" else (LeNet, 1, 28)
        S, E, n = (1 if name == "B" else 10), 3, 10
        model = FlatModel(ctor(c, 10, size).to(dev))
        data = torch.randn(S, n, c, size, size, generator=gen)
        labels = torch.eye(10).repeat(S, n // 10, 1)
        real_x = torch.randn(real_batch, c, size, size, generator=gen)
        real_y = torch.randint(0, 10, (real_batch,), generator=gen)
    elif name == "E":
        L, D, S, N, E = 400, 100, 10, 2, 3
        model = FlatModel(TextConvNet(D, 1, L).to(dev))
        data = 0.4 * torch.randn(S, N, L, D, generator=gen)
        real_x = 0.4 * torch.randn(real_batch, L, D, generator=gen)
        labels = (torch.arange(S * N) % 2).float().reshape(S, N)
        real_y = torch.randint(0, 2, (real_batch,), generator=gen)
        kind = "binary"
    else:
        L, D, K, S, N, E = 30, 100, 6, 1, 120, 2
        model = FlatModel(BiLSTM(D, K, L).to(dev))
        data = 0.4 * torch.randn(S, N, L, D, generator=gen)
        real_x = 0.4 * torch.randn(real_batch, L, D, generator=gen)
        labels = torch.eye(K).repeat(S, -(-N // K), 1)[:, :N]
        real_y = torch.randint(0, K, (real_batch,), generator=gen)
    w0 = sample_weights(model, shape.nets, generator=gen)
    raw = torch.full((S * E,), -3.9)
    return Problem(
        model,
        w0.to(dev),
        data.to(dev),
        labels.to(dev),
        raw.to(dev),
        real_x.to(dev),
        real_y.to(dev),
        kind,
        shape.nets,
        shape.random_init,
        gen,
    )


@dataclass
class BenchResult:
    shape: str
    about: str
    engine: str
    median_s: float
    min_s: float
    times_s: list[float]
    peak_mb: float
    threads: int
    device: str
    backend: str
    path: str
    torch: str = torch.__version__
    machine: str = field(default_factory=platform.processor)

    def line(self) -> str:
        return (
            f"{self.shape}  {self.engine:8s} median {self.median_s * 1e3:9.1f} ms  "
            f"min {self.min_s * 1e3:9.1f} ms  peak {self.peak_mb:8.1f} MB  ({self.about})"
        )


def _iteration(p: Problem, engine: str, opt: torch.optim.Optimizer, params) -> Callable[[], None]:
    def run() -> None:
        if p.random_init:
            p.w0 = sample_weights(p.model, p.nets, generator=p.generator).to(p.w0.device)
        hg = hypergradient(
            p.model, p.w0, p.data.detach(), p.labels.detach(), p.raw_lrs.detach(),
            p.real_x, p.real_y, label_kind=p.kind, learn_labels=True, engine=engine, rng_seed=0,
        )  # fmt: skip
        for q, g in zip(params, (hg.grad_data, hg.grad_raw_lrs, hg.grad_labels), strict=True):
            q.grad = g.to(q.dtype)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_shape(
    name: str,
    engine: str = "adjoint",
    iters: int = 15,
    warmup: int = 3,
    device: str = "cpu",
    real_batch: int = 1024,
) -> BenchResult:
    """Time ``iters`` outer iterations of shape ``name`` after ``warmup`` untimed ones."""
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got {iters} and {warmup}")
    p = make_problem(name, real_batch, device)
    params = [p.data.requires_grad_(), p.raw_lrs.requires_grad_(), p.labels.requires_grad_()]
    opt = torch.optim.Adam(params, lr=0.01, betas=(0.5, 0.999))
    run = _iteration(p, engine, opt, params)
    for _ in range(warmup):
        run()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - t0)
    _, peak = peak_memory(run, device)
    choice = ops.last_backend("inner_update")
    return BenchResult(
        shape=name,
        about=SHAPES[name].about,
        engine=engine,
        median_s=statistics.median(times),
        min_s=min(times),
        times_s=times,
        peak_mb=peak / 2**20,
        threads=torch.get_num_threads(),
        device=device,
        backend=choice.backend if choice else "unknown",
        path=describe(p.model) if engine == "adjoint" else "autograd (unroll)",
    )


def write_json(results: list[BenchResult], path: str) -> None:
    meta: dict[str, Any] = {"backend_info": ops.backend_info(), "date": time.strftime("%F")}
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "results": [asdict(r) for r in results]}, f, indent=1)
