"""``run_baselines``: every baseline of a table cell, with its step size and draws."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fastdistill.baselines._common import (
    BASELINES,
    DEFAULT_LR,
    LR_GRID,
    BaselineAccuracy,
    _check_counts,
    _class_members,
    _cpu_generator,
    _lr_meta,
    class_layout,
    log,
    with_lr,
)
from fastdistill.baselines.kmeans import kmeans_centroids
from fastdistill.baselines.knn import knn_accuracy
from fastdistill.baselines.optimized import _score_indices, choose_lr, optimized_real
from fastdistill.baselines.real import _random_real_set, average_real
from fastdistill.data.protocol import DistillData
from fastdistill.distilled import DistilledSet
from fastdistill.distributed import all_reduce_sum, rank_and_world
from fastdistill.engine.functional import FlatModel
from fastdistill.engine.init import InitScheme, sample_weights
from fastdistill.evaluate import evaluate_distilled, skip_random_nets


def run_baselines(
    data: DistillData,
    model: FlatModel | nn.Module,
    *,
    per_class: int = 1,
    steps: int = 10,
    epochs: int = 3,
    classes_per_step: int | None = None,
    init: str = "random",
    n_nets: int = 200,
    init_weights: Tensor | None = None,
    scheme: InitScheme = "xavier",
    gain: float = 1.0,
    lr: float | Tensor | None = None,
    lr_grid: Sequence[float] = LR_GRID,
    draws: int = 10,
    candidates: int = 50,
    keep_fraction: float = 0.2,
    score_nets: int = 20,
    score_samples: int = 1024,
    knn_k: int = 1,
    kmeans_n_init: int = 1,
    names: Sequence[str] = BASELINES,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> dict[str, BaselineAccuracy]:
    """Test accuracies of the baselines ``names`` at ``per_class`` x classes per step samples
    per step, ``steps`` steps, ``epochs`` epochs: the size and schedule of a distilled set.

    Trained baselines are evaluated by :func:`evaluate_distilled`: ``init="fixed"`` trains the
    net ``init_weights`` (drawn once from ``scheme`` if None; pass the distilled set's own);
    ``init="random"`` trains ``n_nets`` fresh nets in total. Random real and k-means are drawn
    ``draws`` times (the nets are spread over the draws; fixed init gives one accuracy per draw)
    and their k-NN classifiers use the same draws; optimized real keeps ``keep_fraction`` of
    ``candidates`` draws (see :func:`optimized_real`), spread the same way. ``lr``: one constant
    or ``T`` step sizes for all baselines; None picks one per baseline from ``lr_grid`` by
    training-set accuracy (random and optimized real share the choice made on the first random
    draw). Deterministic given ``generator`` (default: a CPU generator seeded with ``seed``).
    """
    unknown = [n for n in names if n not in BASELINES]
    if unknown or not names:
        raise ValueError(f"unknown baseline(s) {unknown or names!r}; choose from {BASELINES}")
    if init not in ("fixed", "random"):
        raise ValueError(f"init must be 'fixed' or 'random', got {init!r}")
    if n_nets < 1 or draws < 1:
        raise ValueError(f"n_nets and draws must be >= 1, got {n_nets} and {draws}")
    model = model if isinstance(model, FlatModel) else FlatModel(model)
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    cpu = _cpu_generator(gen)
    layout = class_layout(data.num_classes, steps, per_class, classes_per_step)
    members = _class_members(data)
    _check_counts(data, members, layout, "baselines")
    if init == "fixed" and init_weights is None:
        init_weights = sample_weights(model, 1, scheme=scheme, gain=gain, generator=cpu)
    fixed = init_weights if init == "fixed" else None
    if fixed is None:
        score_w = sample_weights(model, score_nets, scheme=scheme, gain=gain, generator=cpu)
    else:
        score_w = fixed
    run = _Run(
        data,
        model,
        layout,
        members,
        epochs,
        init,
        n_nets,
        fixed,
        scheme,
        gain,
        gen,
        cpu,
        lr,
        tuple(lr_grid),
        score_w,
        _score_indices(data, score_samples, cpu),
        knn_k,
    )
    wanted = set(names)
    out: dict[str, BaselineAccuracy] = {}
    # dropout in the nets draws from the global RNG: seed it from the generator, restore it after
    devices = [data.train_x.device] if data.train_x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=cpu)))
        if wanted & {"random_real", "knn_random_real", "optimized_real"}:
            both = wanted & {"random_real", "knn_random_real"}
            rand = [run.random_draw() for _ in range(draws if both else 1)]
            if wanted & {"random_real", "optimized_real"}:
                run.choose("real", rand[0])
            out.update(run.trained_and_knn("random_real", rand, wanted))
        if "optimized_real" in wanted:
            kept = optimized_real(
                data,
                model,
                per_class=per_class,
                steps=steps,
                epochs=epochs,
                classes_per_step=classes_per_step,
                lr=run.chosen["real"],
                init_weights=fixed,
                candidates=candidates,
                keep_fraction=keep_fraction,
                score_weights=score_w,
                score_samples=score_samples,
                generator=cpu,
            )
            out["optimized_real"] = run.trained("real", kept)
        if wanted & {"kmeans", "knn_kmeans"}:
            km = [
                kmeans_centroids(
                    data,
                    per_class=per_class,
                    steps=steps,
                    epochs=epochs,
                    classes_per_step=classes_per_step,
                    init_weights=fixed,
                    n_init=kmeans_n_init,
                    generator=cpu,
                )
                for _ in range(draws)
            ]
            if "kmeans" in wanted:
                run.choose("kmeans", km[0])
            out.update(run.trained_and_knn("kmeans", km, wanted))
        if "average_real" in wanted:
            avg = average_real(
                data,
                per_class=per_class,
                steps=steps,
                epochs=epochs,
                classes_per_step=classes_per_step,
                init_weights=fixed,
            )
            out["average_real"] = run.trained(run.choose("average_real", avg), [avg])
    return {n: out[n] for n in names if n in out}


@dataclass
class _Run:
    """What every baseline of one :func:`run_baselines` call shares: the data, nets, step-size
    choices and scoring examples."""

    data: DistillData
    model: FlatModel
    layout: Tensor
    members: list[Tensor]
    epochs: int
    init: str
    n_nets: int
    fixed: Tensor | None
    scheme: InitScheme
    gain: float
    gen: torch.Generator
    cpu: torch.Generator
    lr: float | Tensor | None
    lr_grid: tuple[float, ...]
    score_weights: Tensor
    score_indices: Tensor
    knn_k: int
    chosen: dict[str, float | Tensor] = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype:
        """The nets' dtype: sets are evaluated in it (a float64 model trains in float64)."""
        return next(self.model.module.parameters()).dtype

    def random_draw(self) -> DistilledSet:
        args = (self.layout, self.epochs, DEFAULT_LR, self.fixed, self.cpu)
        return _random_real_set(self.data, self.members, *args)

    def choose(self, key: str, pilot: DistilledSet) -> str:
        """Fix the step size of ``key`` (given, or chosen on ``pilot``); returns ``key``."""
        if key not in self.chosen:
            if self.lr is not None:
                self.chosen[key] = self.lr
            else:
                args = (self.score_weights, self.score_indices, self.lr_grid)
                self.chosen[key] = choose_lr(pilot, self.model, self.data, *args)
                log.info("baselines %s: step size %s", key, self.chosen[key])
        return key

    def trained(self, key: str, sets: list[DistilledSet]) -> BaselineAccuracy:
        """Test accuracies of nets trained on ``sets`` at ``key``'s step size, ``n_nets`` in
        all spread over the sets (fixed init: the one net on each set). Under torchrun draw i
        is trained by rank ``i mod world`` and the accuracies meet in one exact all-reduce."""
        lr = self.chosen[key]
        rank, world = rank_and_world()
        accs = []
        for i, (d, nets) in enumerate(zip(sets, _split(self.n_nets, len(sets)))):
            if self.init == "random" and nets == 0:
                continue
            n = max(nets, 1)
            if i % world != rank:
                if self.init == "random":  # the next draws' weights come from the same stream
                    skip_random_nets(
                        self.model, n, scheme=self.scheme, gain=self.gain, generator=self.gen,
                        dtype=self.dtype,
                    )  # fmt: skip
                accs.append(torch.zeros(1 if self.init == "fixed" else n, dtype=torch.float64))
                continue
            acc = evaluate_distilled(
                with_lr(d, lr).to(dtype=self.dtype),
                self.model,
                self.data.test_x,
                self.data.test_y,
                init=self.init,
                n_nets=n,
                init_weights=self.fixed,
                scheme=self.scheme,
                gain=self.gain,
                generator=self.gen,
                transform=self.data.model_inputs,
                distribute=False,
            )
            accs.append(acc.accuracies.double().cpu())
        return BaselineAccuracy(_gathered(torch.cat(accs), world), lr=_lr_meta(lr), draws=len(sets))

    def knn(self, sets: list[DistilledSet]) -> BaselineAccuracy:
        rank, world = rank_and_world()
        accs = [
            knn_accuracy(self.data, d, k=self.knn_k) if i % world == rank else 0.0
            for i, d in enumerate(sets)
        ]
        return BaselineAccuracy(
            _gathered(torch.tensor(accs, dtype=torch.float64), world),
            draws=len(sets),
            k=self.knn_k,
        )

    def trained_and_knn(
        self, name: str, sets: list[DistilledSet], wanted: set[str]
    ) -> dict[str, BaselineAccuracy]:
        """``name`` (nets trained on ``sets``) and ``knn_<name>``, those of them wanted."""
        out = {}
        if name in wanted:
            out[name] = self.trained("real" if name == "random_real" else name, sets)
        if f"knn_{name}" in wanted:
            out[f"knn_{name}"] = self.knn(sets)
        return out


def _gathered(accs: Tensor, world: int) -> Tensor:
    """Sum of the ranks' zero-filled accuracy vectors: one non-zero addend each, so exact."""
    if world == 1:
        return accs
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    (out,) = all_reduce_sum([accs.to(device)])
    return out.cpu()


def _split(total: int, parts: int) -> list[int]:
    """``total`` nets spread as evenly as possible over ``parts`` draws (earlier draws first)."""
    return [total // parts + (i < total % parts) for i in range(parts)]
