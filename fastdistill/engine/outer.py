"""The outer loop: Adam over distilled data, labels and step sizes (SPEC §3).

One iteration: draw a real batch, draw the nets' initial weights (the fixed init, or fresh
ones), compute the exact hypergradient with the chosen engine, step Adam; at the end of every
pass over the real data, step the learning-rate schedule (after the optimiser, unlike the
original code). A non-finite loss or gradient stops the run with a clear error and leaves the
last good state in place. ``state_dict``/``save_checkpoint`` capture everything needed to
resume exactly: tensors, optimiser moments, schedule, RNG states and the data position.
"""

from __future__ import annotations

import json
import math
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
from fastdistill.distilled import DistilledSet, atomic_save_safetensors, load_safetensors
from fastdistill.engine.distributed import Shard, all_reduce_sum, is_main_rank, rank_and_world
from fastdistill.engine.functional import FlatModel
from fastdistill.engine.hypergrad import hypergradient
from fastdistill.engine.init import sample_weights
from fastdistill.evaluate import Accuracy, evaluate_distilled
from fastdistill.models import build_model_for

CHECKPOINT_FORMAT = "fastdistill.checkpoint/1"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _same_config(saved: dict[str, Any], config: DistillConfig) -> bool:
    """The checkpoint's configuration is this run's; fields added to DistillConfig after the
    checkpoint was written count as equal while this run keeps their defaults."""
    current = json.loads(json.dumps(config.to_dict()))
    defaults = json.loads(json.dumps(DistillConfig().to_dict()))
    return all(
        saved[k] == v if k in saved else v == defaults.get(k) for k, v in current.items()
    ) and set(saved) <= set(current)


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
        self.data = data.to(self.device)
        self.val_x = self.val_y = None
        if c.validation > 0:
            self.data, self.val_x, self.val_y = split_validation(self.data, c.validation, c.seed)
        self.binary = self.data.binary
        module = build_model_for(c.model, self.data, **c.model_kwargs)
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
        # Best set by validation accuracy (when config.validation > 0), restored by fit().
        self.best: dict[str, Any] | None = None
        self.best_tensors: dict[str, Tensor] = {}

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

    def step(self) -> dict[str, float]:
        """One outer iteration; returns its statistics."""
        c, d = self.config, self.distilled
        idx, epoch_ended = self.sampler.next_indices()
        idx = idx.to(self.device)
        w0 = self.sample_init()
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        # torchrun: every rank drew the same nets and batch; it keeps its shard (distributed.py)
        rank, world = rank_and_world()
        shard = Shard.of(w0.shape[0], idx.numel(), rank, world)
        w0, idx = w0[shard.nets], idx[shard.batch]
        hg = hypergradient(
            self.model,
            w0,
            d.data,
            d.labels,
            d.raw_lrs,
            self.inputs(self.data.train_x[idx]),
            self.data.train_y[idx],
            label_kind=d.label_kind,
            learn_labels=d.learn_labels,
            engine=c.engine,
            checkpoint_every=c.checkpoint_every,
            checkpoint_slots=c.checkpoint_slots,
            outer_chunk=c.outer_chunk,
            rng_seed=seed,
        )
        grads = [hg.grad_data, hg.grad_raw_lrs] + ([hg.grad_labels] if d.learn_labels else [])
        if world > 1:
            *grads, loss_t = all_reduce_sum(
                [g * shard.share for g in grads] + [hg.outer_loss.mean().reshape(1) * shard.share]
            )
            loss = float(loss_t)
        else:
            loss = float(hg.outer_loss.mean())
        if not math.isfinite(loss) or not all(torch.isfinite(g).all() for g in grads):
            raise NonFiniteLossError(
                f"non-finite outer loss ({loss}) or hypergradient at iteration {self.iteration}; "
                "the distilled set keeps its last good values (lower lr or distill_lr)"
            )
        for p, g in zip(self.params, grads):
            p.grad = g.to(p.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if epoch_ended:
            self.scheduler.step()
        self.iteration += 1
        stats = {
            "iteration": self.iteration,
            "outer_loss": loss,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        return stats

    def fit(
        self,
        iterations: int | None = None,
        *,
        progress: bool = True,
        log_every: int = 50,
        callback: Callable[[Distiller, dict[str, float]], None] | None = None,
        checkpoint_path: str | Path | None = None,
        checkpoint_every: int = 500,
    ) -> DistilledSet:
        """Run until ``iterations`` (default: the configuration's total) have been done.

        With ``checkpoint_path``, an atomic checkpoint is written every ``checkpoint_every``
        iterations, at the end, and when the run stops on an error or Ctrl-C.
        """
        target = self.total_iterations if iterations is None else iterations
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=target, initial=self.iteration, desc="distill", unit="it")
        running = None
        try:
            while self.iteration < target:
                t0 = time.perf_counter()
                stats = self.step()
                self.wall_time += time.perf_counter() - t0
                running = (
                    stats["outer_loss"]
                    if running is None
                    else (0.95 * running + 0.05 * stats["outer_loss"])
                )
                if self.iteration % log_every == 0 or self.iteration == target:
                    self.history.append(
                        {**stats, "smoothed_loss": running, "wall_time": self.wall_time}
                    )
                if bar is not None:
                    bar.update(1)
                    if self.iteration % 10 == 0:
                        bar.set_postfix(loss=f"{running:.4f}", lr=f"{stats['lr']:.2g}")
                if self.val_x is not None and (
                    self.iteration % self.config.validate_every == 0 or self.iteration == target
                ):
                    self._validate()
                if checkpoint_path and self.iteration % checkpoint_every == 0:
                    self.save_checkpoint(checkpoint_path)
                if callback is not None:
                    callback(self, stats)
        except BaseException:
            if checkpoint_path:
                self.save_checkpoint(checkpoint_path)
            raise
        finally:
            if bar is not None:
                bar.close()
        if self.best is not None and self.iteration >= self.total_iterations:
            self.restore_best()
        if checkpoint_path:
            self.save_checkpoint(checkpoint_path)
        return self.distilled

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
        self, n_nets: int | None = None, seed: int | None = None, split: str = "test"
    ) -> Accuracy:
        """Accuracy of the distilled set under this run's init distribution (SPEC §4), on the
        full test set or (``split="validation"``) on the held-out part of the training set."""
        if split not in ("test", "validation"):
            raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
        if split == "validation" and self.val_x is None:
            raise ValueError("no validation split: set config.validation > 0")
        x, y = (self.data.test_x, self.data.test_y) if split == "test" else (self.val_x, self.val_y)
        c = self.config
        gen = torch.Generator(device=self.device).manual_seed(c.seed + 2 if seed is None else seed)
        with torch.no_grad():
            d = self.distilled.to(self.device)
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
            "history": self.history,
            "config": self.config.to_dict(),
            "param_groups": opt["param_groups"],
            "scheduler": self.scheduler.state_dict(),
            "sampler": json_sampler,
            "best": self.best,
        }
        return tensors, state

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write the checkpoint atomically (rank 0 only under torchrun; the ranks agree)."""
        if not is_main_rank():
            return Path(path)
        tensors, state = self.state_dict()
        meta = {"format": CHECKPOINT_FORMAT, "state": json.dumps(state)}
        atomic_save_safetensors(tensors, Path(path), meta)
        return Path(path)

    def load_checkpoint(self, path: str | Path, *, allow_device_change: bool = False) -> None:
        """Restore a checkpoint written by a run of the same configuration.

        The resume is exact on the device type that wrote the checkpoint. A CUDA generator's
        state cannot continue on the CPU (or back): with ``allow_device_change`` the run goes on
        with the init-weight stream re-seeded from (seed, iteration), which changes the random
        nets drawn from then on (fixed-init runs draw none) and nothing else.
        """
        tensors, meta = load_safetensors(path, "cpu")
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a fastdistill checkpoint")
        state = json.loads(meta["state"])
        if not _same_config(state["config"], self.config):
            raise ValueError(f"{path} was written by a run with another configuration")
        d = self.distilled
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
        self.best_tensors = {
            k[len("best.") :]: v.to(self.device)
            for k, v in tensors.items()
            if k.startswith("best.")
        }
        self.iteration = state["iteration"]
        self.wall_time = state["wall_time"]
        self.history = state["history"]
