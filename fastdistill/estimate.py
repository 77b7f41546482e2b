"""How long a run will take and how much memory it needs, before committing hours to it.

:func:`estimate_run` times a few outer iterations of a built :class:`Distiller` (after a
warm-up), one validation and one evaluation chunk, and projects the whole run on this machine
and backend; :func:`preset_sizes` is the size of a preset (T, distilled samples, nets per
iteration, iterations) without loading its data. ``fastdistill distill --estimate`` and
``fastdistill presets`` print them; ``tools/measure_presets.py`` measures the reference table
in ``fastdistill/preset_timings.py``.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from fastdistill.config import DistillConfig

#: Training-set sizes of the named datasets (before a validation split), for iteration counts
#: without loading the data.
TRAIN_SIZES = {"digits": 1347, "mnist": 60000, "fashion-mnist": 60000, "cifar10": 50000,
               "imdb": 25000, "sst5": 8544, "sst2": 6920, "trec6": 5452, "trec50": 5452}  # fmt: skip


@dataclass
class RunEstimate:
    iterations: int  # outer iterations still to run
    seconds_per_iteration: float
    timed_iterations: int
    validations: int
    seconds_per_validation: float
    evaluation_s: float  # the final test evaluation (eval_nets nets, or the fixed one)
    controls_s: float  # hard-label and random-real controls: two more evaluations
    load_s: float
    peak_memory_bytes: int
    memory_kind: str
    device: str

    @property
    def total_s(self) -> float:
        return (
            self.load_s
            + self.iterations * self.seconds_per_iteration
            + self.validations * self.seconds_per_validation
            + self.evaluation_s
            + self.controls_s
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_s": self.total_s}

    def lines(self) -> list[str]:
        distill = self.iterations * self.seconds_per_iteration
        first = (
            f"  {self.iterations} iterations x {self.seconds_per_iteration:.4g} s = "
            f"{format_duration(distill)} (timed {self.timed_iterations} after a warm-up)"
        )
        out = [first]
        if self.validations:
            out.append(
                f"  {self.validations} validations x {self.seconds_per_validation:.3g} s = "
                f"{format_duration(self.validations * self.seconds_per_validation)}"
            )
        out.append(
            f"  data loading {format_duration(self.load_s)}, final evaluation "
            f"{format_duration(self.evaluation_s)}"
            + (f", controls {format_duration(self.controls_s)}" if self.controls_s else "")
        )
        out.append(
            f"  total about {format_duration(self.total_s)}; peak memory "
            f"{self.peak_memory_bytes / 2**20:.0f} MiB ({self.memory_kind})"
        )
        return out


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 10:
        return f"{seconds:.2f}s"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _peak_rss() -> int:
    """The process's peak resident memory in bytes (Linux: KiB; macOS: bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_iterations(distiller: Any, iterations: int = 5, warmup: int = 2) -> float:
    """Seconds per outer iteration over ``iterations`` steps after ``warmup`` untimed ones.
    The distiller advances (use a throwaway one)."""
    if iterations < 1:
        raise ValueError(f"--estimate needs at least 1 timed iteration, got {iterations}")
    for _ in range(warmup):
        distiller.step()
    _sync(distiller.device)
    t0 = time.perf_counter()
    for _ in range(iterations):
        distiller.step()
    _sync(distiller.device)
    return (time.perf_counter() - t0) / iterations


def estimate_run(
    distiller: Any, *, iterations: int = 5, warmup: int = 2, load_s: float = 0.0
) -> RunEstimate:
    """Project the wall time and peak memory of ``distiller``'s whole run (what is left of it)
    from ``iterations`` timed steps, one validation and one evaluation chunk. The distiller
    is used up: build a fresh one for the real run."""
    c = distiller.config
    device = distiller.device
    left = max(0, distiller.total_iterations - distiller.iteration)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_it = time_iterations(distiller, iterations, warmup)
    validations, per_val = 0, 0.0
    if distiller.val_x is not None:
        first = distiller.iteration + 1
        last = distiller.total_iterations
        validations = last // c.validate_every - (first - 1) // c.validate_every
        if last % c.validate_every:
            validations += 1  # the last iteration always validates
        t0 = time.perf_counter()
        distiller.evaluate(n_nets=min(c.eval_nets, 20), split="validation")
        _sync(device)
        per_val = time.perf_counter() - t0
    chunk = 1 if c.init == "fixed" else min(c.eval_nets, 50)
    t0 = time.perf_counter()
    distiller.evaluate(n_nets=chunk)
    _sync(device)
    evaluation = (time.perf_counter() - t0) * (1 if c.init == "fixed" else c.eval_nets / chunk)
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device), "CUDA memory allocated by torch"
    else:
        peak, kind = _peak_rss(), "peak resident memory of the process"
    return RunEstimate(
        iterations=left,
        seconds_per_iteration=per_it,
        timed_iterations=iterations,
        validations=validations,
        seconds_per_validation=per_val,
        evaluation_s=evaluation,
        controls_s=2 * evaluation if c.controls else 0.0,
        load_s=load_s,
        peak_memory_bytes=int(peak),
        memory_kind=kind,
        device=str(device),
    )


def preset_sizes(config: DistillConfig) -> dict[str, Any]:
    """``T``, distilled samples, nets per iteration and outer iterations of a configuration
    (iterations from :data:`TRAIN_SIZES` when ``iterations`` is not set; None if unknown)."""
    c = config
    per_step = (c.classes_per_step or _num_classes(c.dataset) or 0) * c.images_per_class
    iterations = c.iterations
    n = TRAIN_SIZES.get(c.dataset)
    if iterations is None and n is not None:
        held = math.ceil(n * c.validation) if c.validation > 0 else 0
        iterations = c.outer_epochs * ((n - held) // c.real_batch_size)
    return {
        "T": c.total_steps,
        "samples": per_step * c.steps if per_step else None,
        "nets_per_iteration": c.nets_per_iteration,
        "iterations": iterations,
    }


_NUM_CLASSES = {"digits": 10, "mnist": 10, "fashion-mnist": 10, "cifar10": 10, "imdb": 2,
                "sst5": 5, "sst2": 2, "trec6": 6, "trec50": 50}  # fmt: skip


def _num_classes(dataset: str) -> int | None:
    return _NUM_CLASSES.get(dataset)
