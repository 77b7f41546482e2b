"""The outer loop: Adam over distilled data, labels and step sizes (docs/algorithm.md §3).

One iteration: draw a real batch, draw the nets' initial weights (the fixed init, or fresh
ones), compute the exact hypergradient with the chosen engine, step Adam; at the end of every
pass over the real data, step the learning-rate schedule (after the optimiser, unlike the
original code). An iteration whose loss or gradient is not finite (an unlucky draw of random
nets can diverge inside the unroll) is skipped: no update, a warning, the count kept; more than
``nonfinite_skips`` in a row stop the run with a clear error and the last good state in place.
``state_dict``/``save_checkpoint`` capture everything needed to resume exactly: tensors,
optimiser moments, schedule, RNG states and the data position.

Checkpoints are written only at iteration boundaries: periodically, at the end, and when a
SIGINT/SIGTERM asks the run to stop (the handler sets a flag; the iteration in progress
finishes, the checkpoint is written, :class:`Interrupted` is raised). An error inside an
iteration writes nothing, so the file on disk is always a boundary state. Each write keeps the
previous file as ``NAME.prev.safetensors``; :meth:`Distiller.resume` falls back to it when the
newest fails verification.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastdistill.config import DistillConfig
from fastdistill.data import RealBatchSampler, load_dataset
from fastdistill.data.protocol import DistillData
from fastdistill.data.split import split_validation
from fastdistill.distilled import (
    ArtifactError,
    DistilledSet,
    atomic_save_safetensors,
    load_safetensors,
    remove_orphan_temps,
)
from fastdistill.distributed import (
    Shard,
    WorkPlan,
    all_reduce_sum,
    gather_units,
    is_main_rank,
    ordered_outer,
    ordered_sum,
    rank_and_world,
)
from fastdistill.engine.functional import FlatModel
from fastdistill.engine.fused import outer_value_and_grad
from fastdistill.engine.hypergrad import Hypergradient, hypergradient
from fastdistill.engine.init import sample_weights
from fastdistill.evaluate import Accuracy, evaluate_distilled
from fastdistill.models import build_model_for
from fastdistill.runlog import make_progress

log = logging.getLogger("fastdistill.distiller")
CHECKPOINT_FORMAT = "fastdistill.checkpoint/1"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _config_differences(saved: dict[str, Any], config: DistillConfig) -> list[str]:
    """``field: CHECKPOINT in the checkpoint, NOW now`` for each field where the checkpoint's
    configuration is not this run's; fields added to DistillConfig after the checkpoint was
    written count as equal while this run keeps their defaults."""
    current = json.loads(json.dumps(config.to_dict()))
    defaults = json.loads(json.dumps(DistillConfig().to_dict()))
    diffs = []
    for k, v in current.items():
        old = saved[k] if k in saved else defaults.get(k)
        if old != v:
            shown = json.dumps(old) if k in saved else f"{json.dumps(old)} (default)"
            diffs.append(f"{k}: {shown} in the checkpoint, {json.dumps(v)} now")
    diffs += [f"{k}: not a field of this version" for k in sorted(set(saved) - set(current))]
    return diffs


def _same_config(saved: dict[str, Any], config: DistillConfig) -> bool:
    return not _config_differences(saved, config)


def prev_checkpoint_path(path: str | Path) -> Path:
    """``checkpoint.safetensors`` -> ``checkpoint.prev.safetensors`` (the previous good one)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


class Interrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped the run. ``iteration`` is the boundary it stopped at (None when
    outside the loop); ``checkpoint`` the file written there (None: nothing written, e.g. a
    second signal aborted the run). ``exit_code`` is 128 + the signal number."""

    def __init__(
        self,
        signum: int,
        iteration: int | None = None,
        checkpoint: Path | None = None,
        *,
        aborted: bool = False,
    ) -> None:
        self.signum, self.iteration, self.checkpoint, self.aborted = (
            signum,
            iteration,
            checkpoint,
            aborted,
        )
        self.exit_code = 128 + signum
        if aborted:
            msg = (
                f"interrupted again at iteration {iteration}; stopped without writing a "
                "checkpoint (resume with --resume from the last one)"
            )
        elif iteration is None:
            msg = f"interrupted by {signal.Signals(signum).name}"
        else:
            msg = f"interrupted at iteration {iteration}; resume with --resume"
        super().__init__(msg)

    def __str__(self) -> str:
        return str(self.args[0])


class _StopOnSignal:
    """While active (main thread only): the first SIGINT/SIGTERM sets ``signum``; a second one
    raises :class:`Interrupted` (``aborted``) at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, distiller: Distiller) -> None:
        self.distiller = distiller
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            self.restore()
            raise Interrupted(signum, self.distiller.iteration, aborted=True)
        self.signum = signum

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def stop_requested(self) -> bool:
        """Whether to stop at this boundary; under torchrun the ranks agree (one all-reduce),
        so that they all stop at the same iteration and rank 0's checkpoint is theirs."""
        flag = self.signum is not None
        if rank_and_world()[1] > 1:
            (total,) = all_reduce_sum([torch.tensor([float(flag)], device=self.distiller.device)])
            if float(total) > 0 and self.signum is None:
                self.signum = int(signal.SIGTERM)
            return float(total) > 0
        return flag


def check_finite_data(data: DistillData) -> None:
    """Reject real data with NaN/inf (images, or a text dataset's word vectors): otherwise the
    first hypergradient is NaN and the error blames the learning rate."""
    name = getattr(data, "name", type(data).__name__)
    for attr in ("train_x", "test_x", "embeddings"):
        t = getattr(data, attr, None)
        if isinstance(t, Tensor) and t.is_floating_point():
            bad = ~torch.isfinite(t)
            n = int(bad.sum())
            if n:
                first = int(bad.reshape(t.shape[0], -1).any(1).nonzero()[0])
                what = "word vector" if attr == "embeddings" else "example"
                raise ValueError(
                    f"dataset {name!r}: {attr} holds {n} non-finite value(s) (NaN/inf), first "
                    f"in {what} {first}; the input data is broken (not the learning rate): "
                    "fix or re-create the data files"
                )


class NonFiniteLossError(RuntimeError):
    """The outer loss or a hypergradient became NaN/inf; the last good state is kept."""


class Distiller:
    """Learns a :class:`DistilledSet` for a model and a real dataset.

    Example::

        d = Distiller(get_preset("digits-lenet-fixed-10").config)
        d.fit()
        print(d.evaluate())
    """

    def __init__(
        self,
        config: DistillConfig,
        data: DistillData | None = None,
        *,
        device: str | torch.device = "cpu",
        data_root: str | Path | None = None,
        download: bool = False,
    ) -> None:
        self.config = c = config
        self.device = torch.device(device)
        self.dtype = _DTYPES[c.dtype]
        if data is None:
            data = load_dataset(c.dataset, data_root, download=download, **c.data_kwargs())
        check_finite_data(data)
        self.data = data.to(self.device)
        self.val_x = self.val_y = None
        if c.validation > 0:
            self.data, self.val_x, self.val_y = split_validation(self.data, c.validation, c.seed)
        self.binary = self.data.binary
        try:
            module = build_model_for(c.model, self.data, **c.model_kwargs)
        except (TypeError, RuntimeError, ValueError) as err:
            detail = " ".join(str(err).split())
            raise ValueError(
                f"model {c.model!r} cannot be built with model_kwargs="
                f"{json.dumps(c.model_kwargs)} ({detail}); fix model_kwargs (see the model's "
                "constructor in fastdistill/models)"
            ) from None
        self.model = FlatModel(module.to(self.device, self.dtype))

        # One generator for everything drawn on the host side (data, labels, batches), one on
        # the device for initial weights: both are checkpointed.
        self.generator = torch.Generator().manual_seed(c.seed)
        self.init_generator = torch.Generator(device=self.device).manual_seed(c.seed + 1)
        self.distilled = DistilledSet.initialize(
            num_classes=self.data.num_classes,
            sample_shape=tuple(self.data.sample_shape),
            steps=c.steps,
            epochs=c.epochs,
            images_per_class=c.images_per_class,
            classes_per_step=c.classes_per_step,
            learn_labels=c.label_mode == "soft",
            label_init=c.label_init,
            softmax_targets=c.softmax_targets,
            binary=self.binary,
            distill_lr=c.distill_lr,
            generator=self.generator,
            dtype=self.dtype,
            meta=self._meta(),
        ).to(self.device)
        if c.init == "fixed":
            self.distilled.init_weights = sample_weights(
                self.model,
                1,
                scheme=c.init_scheme,
                gain=c.init_gain,
                generator=self.init_generator,
                dtype=self.dtype,
            )[0]
        if c.reduce == "ordered":  # a bad rank_units or world size fails here, not mid-run
            plan = WorkPlan.of(c.nets_per_iteration, c.real_batch_size, c.rank_units)
            world = rank_and_world()[1]
            if world > 1:
                plan.check_world(world)
        self.params = [t.requires_grad_() for t in self.distilled.learnable()]
        self.optimizer = torch.optim.Adam(self.params, lr=c.lr, betas=c.betas)
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=c.decay_epochs, gamma=c.decay_factor
        )
        self.sampler = RealBatchSampler(
            self.data.train_x.shape[0], c.real_batch_size, torch.Generator().manual_seed(c.seed + 3)
        )
        self.iteration = 0
        self.history: list[dict[str, float]] = []
        self.wall_time = 0.0
        self.smoothed_loss: float | None = None  # running mean of the outer loss (history)
        self.skipped: list[int] = []  # iterations skipped for a non-finite loss or gradient
        self.nonfinite_in_row = 0
        # Best set by validation accuracy (when config.validation > 0), restored by fit().
        self.best: dict[str, Any] | None = None
        self.best_tensors: dict[str, Tensor] = {}
        # Where validation accuracy first reached config.stop_at; the run ends there.
        self.reached: dict[str, Any] | None = None

    def _meta(self) -> dict[str, Any]:
        c = self.config
        return {
            "model": {"name": c.model, "kwargs": c.model_kwargs},
            "dataset": self.data.describe(),
            "init": {"kind": c.init, "scheme": c.init_scheme, "gain": c.init_gain},
            "config": c.to_dict(),
        }

    def inputs(self, x: Tensor) -> Tensor:
        """Stored examples -> model inputs in the run's dtype (e.g. text ids -> embeddings)."""
        return self.data.model_inputs(x).to(self.dtype)

    # -- the loop -------------------------------------------------------------------------------
    @property
    def total_iterations(self) -> int:
        c = self.config
        if c.iterations is not None:
            return c.iterations
        return c.outer_epochs * self.sampler.batches_per_epoch

    def sample_init(self) -> Tensor:
        """``[B, P]`` initial weights for this iteration's nets."""
        c, d = self.config, self.distilled
        if c.init == "fixed":
            return d.init_weights.unsqueeze(0).expand(c.nets_per_iteration, -1)
        return sample_weights(
            self.model,
            c.nets_per_iteration,
            scheme=c.init_scheme,
            gain=c.init_gain,
            generator=self.init_generator,
            dtype=self.dtype,
        )

    def _grads(self, hg: Hypergradient) -> list[Tensor]:
        d = self.distilled
        return [hg.grad_data, hg.grad_raw_lrs] + ([hg.grad_labels] if d.learn_labels else [])

    def _call_hypergradient(self, w0: Tensor, x: Tensor, y: Tensor, seed: int, **kw: Any):
        c, d = self.config, self.distilled
        options = {**c.hypergradient_options(), **kw}
        return hypergradient(
            self.model, w0, d.data, d.labels, d.raw_lrs, x, y,
            label_kind=d.label_kind, learn_labels=d.learn_labels, rng_seed=seed, **options,
        )  # fmt: skip

    def _hypergradient_allreduce(
        self, w0: Tensor, x: Tensor, y: Tensor, seed: int
    ) -> tuple[list[Tensor], float]:
        """Each rank its shard of the nets (or of the real batch), one weighted all-reduce."""
        rank, world = rank_and_world()
        shard = Shard.of(w0.shape[0], x.shape[0], rank, world)
        hg = self._call_hypergradient(w0[shard.nets], x[shard.batch], y[shard.batch], seed)
        grads = self._grads(hg)
        if world == 1:
            return grads, float(hg.outer_loss.mean())
        *grads, loss_t = all_reduce_sum(
            [g * shard.share for g in grads] + [hg.outer_loss.mean().reshape(1) * shard.share]
        )
        return grads, float(loss_t)

    def _hypergradient_ordered(
        self, w0: Tensor, x: Tensor, y: Tensor, seed: int
    ) -> tuple[list[Tensor], float]:
        """Units of the iteration (groups of nets, or pieces of the real batch) computed by
        their ranks and summed in unit order: the same bits on any number of ranks."""
        rank, world = rank_and_world()
        plan = WorkPlan.of(w0.shape[0], x.shape[0], self.config.rank_units)
        if plan.kind == "batch":
            if self.config.engine == "unroll" and world == 1:
                hg = self._call_hypergradient(w0, x, y, seed)
                return self._grads(hg), float(hg.outer_loss.mean())
            if self.config.engine == "unroll":
                raise ValueError(
                    "engine=unroll cannot share the real batch over ranks in order; use "
                    "engine=adjoint or --set reduce=allreduce"
                )
            binary = self.binary

            def value_and_grad(w: Tensor, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
                return outer_value_and_grad(self.model, w, xs, ys, binary)

            outer = ordered_outer(plan, value_and_grad, x, y)
            hg = self._call_hypergradient(w0, x, y, seed, outer_pass=outer)
            return self._grads(hg), float(hg.outer_loss.mean())
        per = w0.shape[0] // plan.units
        mine = plan.owned(rank, world)
        rows, shapes = [], None
        for u in mine:  # each unit: its own nets and dropout stream, keyed by the unit index
            unit_seed = (seed + u * 0x9E3779B97F4A7C15) % 2**62
            hg = self._call_hypergradient(w0[u * per : (u + 1) * per], x, y, unit_seed)
            grads = self._grads(hg)
            shapes = [g.shape for g in grads]
            loss = hg.outer_loss.mean().reshape(1)
            rows.append(torch.cat([g.reshape(-1) for g in grads] + [loss.to(grads[0].dtype)]))
        local = torch.stack(rows)
        total = ordered_sum(gather_units(local, mine, plan.units), [1.0 / plan.units] * plan.units)
        grads, i = [], 0
        for shape in shapes:
            n = math.prod(shape)
            grads.append(total[i : i + n].view(shape))
            i += n
        return grads, float(total[i])

    def step(self) -> dict[str, float]:
        """One outer iteration; returns its statistics."""
        c = self.config
        idx, epoch_ended = self.sampler.next_indices()
        idx = idx.to(self.device)
        w0 = self.sample_init()
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        real_x, real_y = self.inputs(self.data.train_x[idx]), self.data.train_y[idx]
        if c.reduce == "allreduce":
            grads, loss = self._hypergradient_allreduce(w0, real_x, real_y, seed)
        else:
            grads, loss = self._hypergradient_ordered(w0, real_x, real_y, seed)
        finite = math.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
        if finite:
            self.nonfinite_in_row = 0
            for p, g in zip(self.params, grads):
                p.grad = g.to(p.dtype)
            self.optimizer.step()
        else:  # the draws are spent, the update dropped: the run goes on as a resumed one would
            self._skip_nonfinite(loss)
        self.optimizer.zero_grad(set_to_none=True)
        if epoch_ended:
            self.scheduler.step()
        self.iteration += 1
        stats = {
            "iteration": self.iteration,
            "outer_loss": loss,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if not finite:
            stats["skipped"] = 1.0
        return stats

    def _skip_nonfinite(self, loss: float) -> None:
        """Count a non-finite iteration; too many in a row mean divergence, not bad luck: stop."""
        self.nonfinite_in_row += 1
        limit = self.config.nonfinite_skips
        if self.nonfinite_in_row > limit:
            row = f"{self.nonfinite_in_row} iterations in a row" if limit else "it"
            raise NonFiniteLossError(
                f"non-finite outer loss ({loss}) or hypergradient at iteration {self.iteration} "
                f"({row}; nonfinite_skips={limit}); the distilled set keeps its last good values "
                "(lower lr or distill_lr)"
            )
        self.skipped.append(self.iteration)
        log.warning(
            "iteration %d: non-finite outer loss (%s) or hypergradient, update skipped "
            "(%d in a row, %d in all; the run stops after %d in a row)",
            self.iteration, loss, self.nonfinite_in_row, len(self.skipped), limit,
        )  # fmt: skip

    def fit(
        self,
        iterations: int | None = None,
        *,
        progress: bool = True,
        log_every: int = 50,
        callback: Callable[[Distiller, dict[str, float]], None] | None = None,
        checkpoint_path: str | Path | None = None,
        checkpoint_every: int = 500,
        handle_signals: bool = True,
        progress_every: float = 30.0,
    ) -> DistilledSet:
        """Run until ``iterations`` (default: the configuration's total) have been done, or
        until validation accuracy reaches ``config.stop_at`` (recorded in ``self.reached``;
        the best validated set is restored, as at the end of a full run).

        With ``checkpoint_path``, a checkpoint is written atomically every ``checkpoint_every``
        iterations and at the end (the previous one kept as ``NAME.prev.safetensors``); before
        the first iteration the folder is checked for writability and space
        (:meth:`check_output`). With ``handle_signals`` (main thread only), SIGINT/SIGTERM
        stop the run at the end of the iteration in progress: the checkpoint is written there
        and :class:`Interrupted` is raised; a second signal aborts at once, writing nothing.
        An exception inside an iteration writes nothing: the file on disk stays the last
        boundary state. ``progress``: a tqdm bar when stderr is a terminal, otherwise a plain
        line every ``progress_every`` seconds (no carriage returns; fastdistill.runlog).
        """
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        target = self.total_iterations if iterations is None else iterations
        ckpt = Path(checkpoint_path) if checkpoint_path else None
        if ckpt is not None and is_main_rank():
            remove_orphan_temps(ckpt.parent, [ckpt.name])
            if self.iteration < target:
                self.check_output(ckpt)
        bar = None
        if progress:  # tqdm on a terminal, else a plain line every progress_every seconds
            bar = make_progress(target, self.iteration, desc="distill", every=progress_every)
        stopper = _StopOnSignal(self) if handle_signals else None
        try:
            if stopper is not None:
                stopper.install()
            while self.iteration < target and self.reached is None:
                saved = self._iterate(target, log_every, bar, callback, ckpt, checkpoint_every)
                if stopper is not None and stopper.stop_requested():
                    if ckpt is not None and not saved:
                        self.save_checkpoint(ckpt)
                    raise Interrupted(stopper.signum, self.iteration, ckpt)
            done = self.iteration >= self.total_iterations or self.reached is not None
            if self.best is not None and done:
                self.restore_best()
            if ckpt is not None:
                self.save_checkpoint(ckpt)
            if stopper is not None and stopper.stop_requested():
                raise Interrupted(stopper.signum, self.iteration, ckpt)
        finally:
            if stopper is not None:
                stopper.restore()
            if bar is not None:
                bar.close()
        return self.distilled

    def _iterate(
        self,
        target: int,
        log_every: int,
        bar: Any,
        callback: Callable[[Distiller, dict[str, float]], None] | None,
        ckpt: Path | None,
        checkpoint_every: int,
    ) -> bool:
        """One iteration with its bookkeeping; returns whether it wrote the checkpoint."""
        t0 = time.perf_counter()
        stats = self.step()
        self.wall_time += time.perf_counter() - t0
        loss = stats["outer_loss"]
        running = self.smoothed_loss
        if math.isfinite(loss):  # a skipped iteration leaves the running mean alone
            running = loss if running is None else 0.95 * running + 0.05 * loss
            self.smoothed_loss = running
        if self.iteration % log_every == 0 or self.iteration == target:
            entry = {**stats, "smoothed_loss": running, "wall_time": self.wall_time}
            if not math.isfinite(loss):
                entry["outer_loss"] = None  # strict JSON in checkpoints and logs
            self.history.append(entry)
        if bar is not None:
            bar.update(1)
            if self.iteration % 10 == 0 and running is not None:
                bar.set_postfix(loss=f"{running:.4f}", lr=f"{stats['lr']:.2g}")
        if self.val_x is not None and (
            self.iteration % self.config.validate_every == 0 or self.iteration == target
        ):
            acc = self._validate()
            stop_at = self.config.stop_at
            if stop_at is not None and acc >= stop_at:
                self.reached = {
                    "iteration": self.iteration,
                    "val_accuracy": acc,
                    "wall_time": self.wall_time,
                }
        saved = False
        if ckpt is not None and self.iteration % checkpoint_every == 0:
            self.save_checkpoint(ckpt)
            saved = True
        if callback is not None:
            callback(self, stats)
        return saved

    def estimate_checkpoint_bytes(self) -> int:
        """About how large a checkpoint of this run is (with Adam's moments and the best set,
        which exist only after the first iteration/validation)."""
        tensors, state = self.state_dict()
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        params = sum(p.numel() * p.element_size() for p in self.params)
        if not self.optimizer.state:
            total += 2 * params  # exp_avg, exp_avg_sq
        if self.val_x is not None and not self.best_tensors:
            total += params
        history = len(json.dumps(state)) + 200 * (self.total_iterations // 50 + 10)
        return total + history + 64 * 1024

    def check_output(self, checkpoint_path: str | Path) -> None:
        """Fail before the first iteration when the checkpoint's folder is a file, is not
        writable, or lacks the space of two checkpoints (the newest and the previous)."""
        folder = Path(checkpoint_path).parent
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"output folder {folder} is a file; pass a folder path")
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd, probe = tempfile.mkstemp(prefix=".fastdistill-write-test.", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise ValueError(
                f"output folder {folder} is not writable ({err.strerror or err}); choose "
                "another folder or fix its permissions"
            ) from None
        need = 2 * self.estimate_checkpoint_bytes()
        free = shutil.disk_usage(folder).free
        if free < need:
            raise ValueError(
                f"output folder {folder} has {free / 2**20:.1f} MiB free but two checkpoints "
                f"of this run need about {need / 2**20:.1f} MiB; free some space or choose "
                "another folder"
            )

    # -- validation: keep the best set (model selection without touching the test set) --------
    def _validate(self) -> float:
        acc = self.evaluate(n_nets=min(self.config.eval_nets, 20), split="validation").mean
        self.history.append({"iteration": self.iteration, "val_accuracy": acc})
        if self.best is None or acc > self.best["val_accuracy"]:
            self.best = {"iteration": self.iteration, "val_accuracy": acc}
            d = self.distilled
            self.best_tensors = {
                "data": d.data.detach().clone(),
                "labels": d.labels.detach().clone(),
                "raw_lrs": d.raw_lrs.detach().clone(),
            }
        return acc

    def restore_best(self) -> None:
        """Put the best validated data, labels and step sizes into the distilled set."""
        if not self.best_tensors:
            raise RuntimeError("no validated set to restore (config.validation is 0?)")
        with torch.no_grad():
            for name, t in self.best_tensors.items():
                getattr(self.distilled, name).copy_(t)

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(
        self,
        n_nets: int | None = None,
        seed: int | None = None,
        split: str = "test",
        chunk: int = 50,
        distilled: DistilledSet | None = None,
    ) -> Accuracy:
        """Accuracy of the distilled set under this run's init distribution (docs/algorithm.md
        §4), on the full test set or (``split="validation"``) on the held-out part of the
        training set. ``distilled``: another set of the same shape (a control) in place of
        the run's. Under torchrun every rank calls it: the nets' chunks are split over the
        ranks (the result does not depend on their number)."""
        if split not in ("test", "validation"):
            raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
        if split == "validation" and self.val_x is None:
            raise ValueError("no validation split: set config.validation > 0")
        x, y = (self.data.test_x, self.data.test_y) if split == "test" else (self.val_x, self.val_y)
        c = self.config
        gen = torch.Generator(device=self.device).manual_seed(c.seed + 2 if seed is None else seed)
        with torch.no_grad():
            d = (self.distilled if distilled is None else distilled).to(self.device)
        return evaluate_distilled(
            d,
            self.model,
            x,
            y,
            transform=self.inputs,
            init=c.init,
            n_nets=c.eval_nets if n_nets is None else n_nets,
            scheme=c.init_scheme,
            gain=c.init_gain,
            generator=gen,
            chunk=chunk,
        )

    # -- exact resume ---------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Tensors and JSON-able state that together resume the run exactly."""
        d = self.distilled
        tensors: dict[str, Tensor] = {
            "data": d.data,
            "labels": d.labels,
            "raw_lrs": d.raw_lrs,
            "rng.host": self.generator.get_state(),
            "rng.init": self.init_generator.get_state(),
        }
        if d.init_weights is not None:
            tensors["init_weights"] = d.init_weights
        tensors.update({f"best.{k}": v for k, v in self.best_tensors.items()})
        opt = self.optimizer.state_dict()
        for i, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"optim.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        sampler_state = self.sampler.state_dict()
        json_sampler = {}
        for k, v in sampler_state.items():
            if torch.is_tensor(v):
                tensors[f"sampler.{k}"] = v
            else:
                json_sampler[k] = v
        state = {
            "iteration": self.iteration,
            "wall_time": self.wall_time,
            "smoothed_loss": self.smoothed_loss,
            "history": self.history,
            "config": self.config.to_dict(),
            "param_groups": opt["param_groups"],
            "scheduler": self.scheduler.state_dict(),
            "sampler": json_sampler,
            "best": self.best,
            "reached": self.reached,
            "skipped": self.skipped,
            "nonfinite_in_row": self.nonfinite_in_row,
        }
        return tensors, state

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write the checkpoint atomically (rank 0 only under torchrun; the ranks agree)."""
        if not is_main_rank():
            return Path(path)
        tensors, state = self.state_dict()
        meta = {"format": CHECKPOINT_FORMAT, "state": json.dumps(state)}
        path = Path(path)
        atomic_save_safetensors(tensors, path, meta, keep_previous=prev_checkpoint_path(path))
        return path

    def resume(
        self,
        path: str | Path,
        *,
        allow_device_change: bool = False,
        report: Callable[[str], None] | None = None,
    ) -> Path | None:
        """Load the newest good checkpoint: ``path``, or its previous one
        (:func:`prev_checkpoint_path`) when ``path`` is missing or fails verification (said
        in one line to ``report``). Returns the file loaded, None when neither exists."""
        path = Path(path)
        prev = prev_checkpoint_path(path)
        if not path.exists() and not prev.exists():
            return None
        if path.exists():
            try:
                self.load_checkpoint(path, allow_device_change=allow_device_change)
                return path
            except ArtifactError as err:
                if not prev.exists():
                    raise
                why = str(err)
        else:
            why = f"{path} is missing"
        try:
            self.load_checkpoint(prev, allow_device_change=allow_device_change)
        except ArtifactError as err:
            raise ArtifactError(
                prev, f"{err.problem} (and the newest checkpoint: {why})", err.tensor
            ) from None
        if report is not None:
            report(f"{why}; resumed from the previous checkpoint {prev} instead")
        return prev

    def load_checkpoint(self, path: str | Path, *, allow_device_change: bool = False) -> None:
        """Restore a checkpoint written by a run of the same configuration.

        The resume is exact on the device type that wrote the checkpoint. A CUDA generator's
        state cannot continue on the CPU (or back): with ``allow_device_change`` the run goes on
        with the init-weight stream re-seeded from (seed, iteration), which changes the random
        nets drawn from then on (fixed-init runs draw none) and nothing else.
        """
        tensors, meta = load_safetensors(path, "cpu", finite=lambda name: name != "rng.init")
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ArtifactError(path, "is not a fastdistill checkpoint")
        try:
            state = json.loads(meta["state"])
            saved_config = state["config"]
            missing = [
                k
                for k in ("iteration", "wall_time", "history", "param_groups", "scheduler")
                if k not in state
            ]
            if missing:
                raise KeyError(missing[0])
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(path, f"has an invalid checkpoint state ({err})") from None
        diffs = _config_differences(saved_config, self.config)
        if diffs:
            raise ValueError(
                f"{path} was written by a run with another configuration ({'; '.join(diffs)}); "
                "resume with the checkpoint's settings, or use another --out to start over"
            )
        d = self.distilled
        expected = {"data": d.data, "labels": d.labels, "raw_lrs": d.raw_lrs}
        expected.update({"rng.host": self.generator.get_state()})
        if d.init_weights is not None:
            expected["init_weights"] = d.init_weights
        for name, t in expected.items():
            if name not in tensors:
                raise ArtifactError(path, f"tensor {name!r} is missing", name)
            if tensors[name].shape != t.shape:
                raise ArtifactError(
                    path,
                    f"tensor {name!r} has shape {tuple(tensors[name].shape)}, this run "
                    f"{tuple(t.shape)}",
                    name,
                )
        with torch.no_grad():
            for name in ("data", "labels", "raw_lrs"):
                getattr(d, name).copy_(tensors[name])
            if d.init_weights is not None:
                d.init_weights.copy_(tensors["init_weights"])
        self.generator.set_state(tensors["rng.host"])
        try:
            self.init_generator.set_state(tensors["rng.init"])
        except RuntimeError as err:
            if not allow_device_change:
                raise ValueError(
                    f"{path}: its random-init stream was written on another device type than "
                    f"this run's ({self.device.type}), so it cannot resume exactly here; resume "
                    "on the device that wrote it, or allow the change (CLI: "
                    "--allow-device-change) to continue with a re-seeded init stream"
                ) from err
            warnings.warn(
                f"{path}: resuming on {self.device.type}, init stream re-seeded (not exact)",
                stacklevel=2,
            )
            self.init_generator.manual_seed(self.config.seed + 1 + int(state["iteration"]))
        opt_state: dict[int, dict[str, Any]] = {}
        for key, v in tensors.items():
            if key.startswith("optim."):
                _, i, k = key.split(".", 2)
                opt_state.setdefault(int(i), {})[k] = v
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        self.scheduler.load_state_dict(state["scheduler"])
        sampler_state = dict(state["sampler"])
        sampler_state.update(
            {k[len("sampler.") :]: v for k, v in tensors.items() if k.startswith("sampler.")}
        )
        self.sampler.load_state_dict(sampler_state)
        self.best = state.get("best")
        self.reached = state.get("reached")
        self.best_tensors = {
            k[len("best.") :]: v.to(self.device)
            for k, v in tensors.items()
            if k.startswith("best.")
        }
        self.iteration = state["iteration"]
        self.wall_time = state["wall_time"]
        self.history = state["history"]
        self.smoothed_loss = state.get("smoothed_loss")
        self.skipped = list(state.get("skipped", []))
        self.nonfinite_in_row = int(state.get("nonfinite_in_row", 0))
