"""The original code's own training loop, with and without the switch to fastdistill.

The original is ilia10000/dataset-distillation at 2856332f (the SLDD/TDD fork of the dataset
distillation code). Its ``Trainer`` (train_distilled_image.py) unrolls the inner steps in
``forward`` and computes the hypergradient in ``backward``; ``accumulate_grad`` hands the
gradients to the leaves and Adam steps. "Switched" is the same trainer with ``forward`` and
``backward`` replaced at run time by :func:`fastdistill.compat.steps_hypergradient` (see
:func:`switch_to_fastdistill`: two short functions); the rest of its loop is the original's.
Nothing of the original is edited or copied: its modules are imported from the checkout whose
path is in ``$FASTDISTILL_ORIGINAL_CODE`` (skipped with a message when unset or not found).

What it takes to import and drive the original here, all at run time (the same as
../shared/tools/original/run_original.py does; that harness parses its command line at import,
so nothing is imported from it): stub modules for torchvision, torchtext, PIL, matplotlib and
skimage (and six when it is not installed) while the original's modules load, then the previous
``sys.modules`` entries are put back; ``optimizer.zero_grad(set_to_none=False)`` (with torch >=
2.0 the original's ``d.grad.add_(g)`` fails on ``None``); the state object is built by hand from
its option parser, on synthetic MNIST-shaped data (the original's ``set_state`` downloads data).

Shapes (LeNet, fixed init, 10 images per step, learned soft labels, real batch 1024):
  A: 10 steps x 3 epochs (T = 30), distill_lr 0.02     B: 1 step x 3 epochs (T = 3), 0.01

Run::

    FASTDISTILL_ORIGINAL_CODE=/tmp/refstudy/ilia \\
        .venv/bin/python -m pytest benchmarks/bench_compat.py --benchmark-only -q
    FASTDISTILL_ORIGINAL_CODE=/tmp/refstudy/ilia .venv/bin/python benchmarks/bench_compat.py

Each pytest case times one variant and runs the other, untimed, between its rounds (before
even rounds, after odd ones), so both see the same load; it prints both variants' min and
median ms, their ratio and the gradients' agreement. The script interleaves the two
(alternating which goes first) and prints a table. Environment: FASTDISTILL_BENCH_THREADS
(default 2), FASTDISTILL_COMPAT_ROUNDS (default 15), FASTDISTILL_COMPAT_ENGINE (default adjoint).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import torch

from fastdistill.compat import steps_hypergradient
from fastdistill.engine import FlatModel
from fastdistill.models import LeNet

ENV_CODE = "FASTDISTILL_ORIGINAL_CODE"
ORIGINAL = "ilia10000/dataset-distillation at 2856332f6366450e43a1a9fc29b2cb5264c573e2"
THREADS = int(os.environ.get("FASTDISTILL_BENCH_THREADS", "2"))
ROUNDS = int(os.environ.get("FASTDISTILL_COMPAT_ROUNDS", "15"))
WARMUP = 3
ENGINE = os.environ.get("FASTDISTILL_COMPAT_ENGINE", "adjoint")

# name -> (distill_steps, distill_epochs, distill_lr)
SHAPES = {"A": (10, 3, 0.02), "B": (1, 3, 0.01)}

# Imported by the original at module load, unused by its distillation loop.
_STUBBED = ["torchvision", "torchtext", "PIL", "matplotlib", "skimage"]
# The original's top-level modules (also the names of unrelated packages, e.g. ``datasets``).
_ORIGINAL_NAMES = [
    "base_options",
    "basics",
    "datasets",
    "networks",
    "train_distilled_image",
    "utils",
]


def original_path() -> tuple[Path | None, str]:
    """The checkout named by $FASTDISTILL_ORIGINAL_CODE, or None and why not."""
    value = os.environ.get(ENV_CODE)
    if not value:
        return None, f"set {ENV_CODE} to a checkout of {ORIGINAL}"
    path = Path(value).expanduser()
    if not (path / "train_distilled_image.py").is_file():
        return None, f"{ENV_CODE}={value}: no train_distilled_image.py there (want {ORIGINAL})"
    return path, ""


# ------------------------------------------------------------------ loading the original
def _stub_module(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__path__ = []  # a package, so that ``import name.sub`` finds the stub below
    mod.__getattr__ = lambda attr: mock.MagicMock(name=f"{name}.{attr}")
    return mod


def _add_metaclass(meta):
    """``six.add_metaclass``: rebuild the decorated class with ``meta`` as its metaclass."""

    def rebuild(cls):
        body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
        return meta(cls.__name__, cls.__bases__, body)

    return rebuild


def _stubs() -> dict[str, types.ModuleType]:
    subs = {
        "torchvision": ["datasets", "transforms", "models"],
        "torchtext": ["data", "datasets", "vocab"],
        "PIL": ["Image"],
        "matplotlib": ["pyplot", "colors"],
        "skimage": ["measure"],
    }
    out = {}
    for top in _STUBBED:
        out[top] = _stub_module(top)
        for sub in subs[top]:
            out[f"{top}.{sub}"] = _stub_module(f"{top}.{sub}")
    import importlib.util

    if importlib.util.find_spec("six") is None:
        for name in ["six", "six.moves", "six.moves.urllib", "six.moves.urllib.parse"]:
            out[name] = _stub_module(name)
        out["six"].add_metaclass = _add_metaclass
    return out


def _owned(name: str, names: list[str]) -> bool:
    return any(name == n or name.startswith(n + ".") for n in names)


@dataclass
class Original:
    """The original's modules, loaded once; ``active()`` puts them into ``sys.modules`` for
    the calls that look themselves up there (``networks.get_networks`` does)."""

    path: Path
    modules: dict[str, types.ModuleType] = field(default_factory=dict)

    def __getattr__(self, name: str):
        try:
            return self.modules[name]
        except KeyError:
            raise AttributeError(name) from None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        saved = {k: m for k, m in sys.modules.items() if _owned(k, _ORIGINAL_NAMES)}
        for k in saved:
            del sys.modules[k]
        sys.modules.update(self.modules)
        try:
            yield
        finally:
            for k in [k for k in sys.modules if _owned(k, _ORIGINAL_NAMES)]:
                del sys.modules[k]
            sys.modules.update(saved)


@functools.cache
def load_original(path: Path) -> Original:
    """Import the original's trainer from ``path`` without touching the rest of the process:
    stubs and the original's modules live in ``sys.modules`` only while they load."""
    stubs = _stubs()
    names = _ORIGINAL_NAMES + list(stubs)
    saved = {k: m for k, m in sys.modules.items() if _owned(k, names)}
    cudnn = torch.backends.cudnn.enabled  # the original turns cuDNN off at import
    for k in saved:
        del sys.modules[k]
    sys.modules.update(stubs)
    sys.path.insert(0, str(path))
    try:
        import base_options  # noqa: F401  (the original's, from ``path``)
        import basics  # noqa: F401
        import networks  # noqa: F401
        import train_distilled_image  # noqa: F401

        loaded = {k: m for k, m in sys.modules.items() if _owned(k, _ORIGINAL_NAMES)}
    finally:
        sys.path.remove(str(path))
        for k in [k for k in sys.modules if _owned(k, names)]:
            del sys.modules[k]
        sys.modules.update(saved)
        torch.backends.cudnn.enabled = cudnn
    orig = Original(path, loaded)
    if not hasattr(orig.basics, "cross_entropy_with_probs"):
        raise RuntimeError(f"{path} is not {ORIGINAL} (no basics.cross_entropy_with_probs)")
    return orig


# ------------------------------------------------------------------ driving its trainer
@dataclass
class Problem:
    trainer: object  # the original's Trainer
    state: object
    rdata: torch.Tensor
    rlabel: torch.Tensor


def build(
    orig: Original,
    steps: int,
    epochs: int,
    lr: float,
    *,
    images_per_class: int = 1,
    real_batch: int = 1024,
    static_labels: bool = False,
    seed: int = 0,
) -> Problem:
    """The original's state, one LeNet (fixed init) and its Trainer, on synthetic data; the
    same arguments give the same trainer parameters and real batch."""
    argv = ["--arch", "LeNet", "--train_nets_type", "known_init", "--n_nets", "1"]
    argv += ["--test_nets_type", "same_as_train", "--distill_steps", str(steps)]
    argv += ["--distill_epochs", str(epochs), "--distill_lr", str(lr)]
    argv += ["--distilled_images_per_class_per_step", str(images_per_class)]
    argv += ["--static_labels", str(int(static_labels)), "--random_init_labels", ""]
    argv += ["--batch_size", str(real_batch), "--device_id", "-1"]
    opt = orig.base_options.options.parser.parse_args(argv, namespace=argparse.Namespace())
    opt.sample_n_nets = opt.sample_n_nets or opt.n_nets
    state = orig.base_options.State(opt)
    # What the original's set_state would fill in for MNIST (it would also load the data).
    o = state.opt
    o.nc, o.input_size, o.num_classes = 1, 28, 10
    o.num_distill_classes = o.num_distill_classes or o.num_classes
    o.init_labels = o.init_labels or list(range(o.num_distill_classes))
    o.dataset_labels = list(range(o.num_classes))
    o.distributed, o.device, o.seed = False, torch.device("cpu"), o.base_seed
    state.world_rank = 0
    for k in ["n_nets", "test_n_nets", "sample_n_nets"]:
        setattr(state, "local_" + k, getattr(state, k))
    gen = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 1, 28, 28, generator=gen)
    rlabel = torch.randint(0, 10, (real_batch,), generator=gen)
    rdata = templates[rlabel] + 1.5 * torch.randn(real_batch, 1, 28, 28, generator=gen)
    torch.manual_seed(seed)  # the network's init and the trainer's distilled data
    with orig.active():
        models = orig.networks.get_networks(state, N=1)
        state.models = state.test_models = models
        trainer = orig.train_distilled_image.Trainer(state, models)
    # torch >= 2.0 zero_grad sets grads to None; the original adds into them in place.
    trainer.optimizer.zero_grad = functools.partial(trainer.optimizer.zero_grad, set_to_none=False)
    return Problem(trainer, state, rdata, rlabel)


def switch_to_fastdistill(trainer, engine: str = "adjoint", **engine_options) -> None:
    """The switch: the trainer's unroll and hypergradient become one fastdistill call, whose
    lists are exactly what the original's ``backward`` returns to its ``accumulate_grad``."""
    model = trainer.models[0]
    size = trainer.state.input_size
    flat = FlatModel(LeNet(model.conv1.in_channels, model.fc3.out_features, size))  # its layout

    def forward(model, rdata, rlabel, steps):
        hg = steps_hypergradient(flat, model.get_param(), steps, rdata, rlabel, engine=engine,
                                 **engine_options)  # fmt: skip
        return hg.loss, hg

    def backward(model, rdata, rlabel, steps, hg):
        return hg.datas, hg.gdatas, hg.lrs, hg.glrs, hg.labels, hg.glabels

    trainer.forward, trainer.backward = forward, backward


def _hypergradient(p: Problem) -> None:
    """The gradient part of the body of the original's ``Trainer.train()`` (one outer
    iteration, minus data loading, logging and checkpoints); the gradients end in ``.grad``."""
    t, state = p.trainer, p.state
    t.optimizer.zero_grad()
    steps = t.get_steps()
    losses, infos = [], []
    for model in t.models:  # known init: no reset; all nets sampled
        loss, saved = t.forward(model, p.rdata, p.rlabel, steps)
        losses.append(loss)
        infos.append(t.backward(model, p.rdata, p.rlabel, steps, saved))
    t.accumulate_grad(infos)
    for param in t.params:
        param.grad.div_(state.sample_n_nets)


def outer_iteration(p: Problem) -> None:
    """One outer iteration of the original's training loop: hypergradient, then Adam."""
    _hypergradient(p)
    p.trainer.optimizer.step()


def gradients(p: Problem) -> dict[str, torch.Tensor]:
    """The leaves' gradients of one outer iteration (no optimiser step)."""
    _hypergradient(p)
    t = p.trainer
    out = {"data": torch.stack([d.grad for d in t.data]).clone()}
    if not p.state.static_labels:
        out["label"] = torch.stack([lab.grad for lab in t.labels]).clone()
    out["lr"] = t.raw_distill_lrs.grad.clone()
    return out


def agreement(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per kind, the largest ||a - b|| / ||b|| over the distilled steps (b: the original's)."""
    if a.keys() != b.keys():
        raise AssertionError(f"different gradients: {sorted(a)} vs {sorted(b)}")
    out = {}
    for k, want in b.items():
        x, y = a[k].reshape(a[k].shape[0], -1), want.reshape(want.shape[0], -1)
        out[k] = float(((x - y).norm(dim=1) / y.norm(dim=1).clamp_min(1e-30)).max())
    return out


def pair(orig: Original, shape, engine: str = "adjoint", **kwargs) -> tuple[Problem, Problem]:
    """The original trainer and a switched one, with identical parameters and real batch;
    ``shape``: a name in SHAPES or (distill_steps, distill_epochs, distill_lr)."""
    steps, epochs, lr = SHAPES[shape] if isinstance(shape, str) else shape
    a = build(orig, steps, epochs, lr, **kwargs)
    b = build(orig, steps, epochs, lr, **kwargs)
    for x, y in zip(a.trainer.params, b.trainer.params):
        assert torch.equal(x, y)
    switch_to_fastdistill(b.trainer, engine)
    return a, b


def _timed(fn, p: Problem, into: list[float]) -> None:
    t0 = time.perf_counter()
    fn(p)
    into.append(time.perf_counter() - t0)


def _summary(t_orig: list[float], t_fd: list[float]) -> dict[str, float]:
    mo, mf = min(t_orig), min(t_fd)
    do, df = statistics.median(t_orig), statistics.median(t_fd)
    return {
        "original_min_ms": 1e3 * mo,
        "original_median_ms": 1e3 * do,
        "fastdistill_min_ms": 1e3 * mf,
        "fastdistill_median_ms": 1e3 * df,
        "ratio_min": mo / mf,
        "ratio_median": do / df,
        "n_original": len(t_orig),
        "n_fastdistill": len(t_fd),
    }


# ------------------------------------------------------------------ pytest-benchmark
try:
    import pytest
except ImportError:  # the script needs no pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module")
    def original():
        path, why = original_path()
        if path is None:
            pytest.skip(why)
        return load_original(path)

    @pytest.fixture(scope="module", params=list(SHAPES))
    def problems(original, request):
        threads = torch.get_num_threads()
        torch.set_num_threads(THREADS)
        a, b = pair(original, request.param, ENGINE)
        agree = agreement(gradients(b), gradients(a))
        yield request.param, a, b, agree
        torch.set_num_threads(threads)

    @pytest.mark.parametrize("variant", ["original", "fastdistill"])
    def test_original_training_loop(benchmark, problems, variant, capsys):
        shape, p_orig, p_fd = problems[:3]
        agree = problems[3]
        benchmark.group = f"original's loop, LeNet shape {shape} (T={p_orig.trainer.T})"
        times = {"original": [], "fastdistill": []}
        mine, other = (p_orig, p_fd) if variant == "original" else (p_fd, p_orig)
        other_name = "fastdistill" if variant == "original" else "original"
        rounds = [0]

        def before():  # even rounds: the other variant first
            if rounds[0] % 2 == 0:
                _timed(outer_iteration, other, times[other_name])

        def after():
            if rounds[0] % 2 == 1:
                _timed(outer_iteration, other, times[other_name])
            rounds[0] += 1

        def target():
            _timed(outer_iteration, mine, times[variant])

        benchmark.pedantic(target, setup=before, teardown=after, rounds=ROUNDS,
                           warmup_rounds=WARMUP)  # fmt: skip
        stats = _summary(times["original"][WARMUP:], times["fastdistill"][WARMUP:])
        stats.update({f"rel_diff_{k}": v for k, v in agree.items()}, engine=ENGINE,
                     threads=torch.get_num_threads(), T=p_orig.trainer.T)  # fmt: skip
        benchmark.extra_info.update(stats)
        with capsys.disabled():
            print(f"\n  [{shape} timed={variant}] " + _line(stats, agree))
        # float32, T up to 30: the two agree to a few 1e-5 (see tests/engine/test_compat_original.py)
        assert max(agree.values()) < 1e-3, agree


def _line(s: dict[str, float], agree: dict[str, float]) -> str:
    return (
        f"original {s['original_min_ms']:.1f}/{s['original_median_ms']:.1f} ms, "
        f"fastdistill {s['fastdistill_min_ms']:.1f}/{s['fastdistill_median_ms']:.1f} ms "
        f"(min/median), ratio {s['ratio_min']:.2f}x/{s['ratio_median']:.2f}x; max rel diff "
        + ", ".join(f"{k} {v:.1e}" for k, v in agree.items())
    )


# ------------------------------------------------------------------ script
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--rounds", type=int, default=max(ROUNDS, 20), help="timed iterations each")
    ap.add_argument("--warmup", type=int, default=WARMUP)
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--engine", default=ENGINE, help="fastdistill engine (adjoint, unroll)")
    a = ap.parse_args(argv)
    path, why = original_path()
    if path is None:
        print(f"skipped: {why}")
        return 0
    torch.set_num_threads(a.threads)
    orig = load_original(path)
    print(f"original: {path}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"fastdistill engine {a.engine}; {a.rounds} timed iterations each, interleaved, "
          f"after {a.warmup} warm-up")  # fmt: skip
    print(f"{'':10}  {'original ms':>15}  {'fastdistill ms':>15}  {'ratio':>13}  max rel diff")
    print(f"{'shape':<6}{'T':>4}  {'min / median':>15}  {'min / median':>15}  "
          f"{'min / median':>13}  data, label, lr")  # fmt: skip
    for shape in a.shapes:
        p_orig, p_fd = pair(orig, shape, a.engine)
        agree = agreement(gradients(p_fd), gradients(p_orig))
        t_orig, t_fd = [], []
        for i in range(a.warmup + a.rounds):
            order = [(p_orig, t_orig), (p_fd, t_fd)]
            for p, into in order if i % 2 == 0 else order[::-1]:
                _timed(outer_iteration, p, into)
        s = _summary(t_orig[a.warmup :], t_fd[a.warmup :])
        print(
            f"{shape:<6}{p_orig.trainer.T:>4}  "
            f"{s['original_min_ms']:>7.1f} / {s['original_median_ms']:<5.1f}  "
            f"{s['fastdistill_min_ms']:>7.1f} / {s['fastdistill_median_ms']:<5.1f}  "
            f"{s['ratio_min']:>5.2f} / {s['ratio_median']:<5.2f}  "
            f"{agree['data']:.1e}, {agree.get('label', float('nan')):.1e}, {agree['lr']:.1e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
