"""The outer loop: reproducibility, exact resume, schedule order, non-finite handling."""

from __future__ import annotations

import math

import pytest
import torch

from fastdistill.config import DistillConfig
from fastdistill.data import load_image_dataset
from fastdistill.distiller import Distiller, NonFiniteLossError


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits")


def tiny(**kw) -> DistillConfig:
    base = {
        "dataset": "digits",
        "model": "mlp",
        "model_kwargs": {"hidden": (16,)},
        "steps": 2,
        "epochs": 2,
        "real_batch_size": 256,
        "iterations": 6,
        "decay_epochs": 1,
        "eval_nets": 4,
    }
    return DistillConfig(**{**base, **kw})


def _tensors(d: Distiller) -> list[torch.Tensor]:
    return [t.detach().clone() for t in (d.distilled.data, d.distilled.labels, d.distilled.raw_lrs)]


@pytest.mark.parametrize("init", ["fixed", "random"])
def test_same_seed_same_run_other_seed_other_run(digits, init):
    runs = []
    for seed in (0, 0, 1):
        d = Distiller(tiny(seed=seed, init=init, nets_per_iteration=2), digits)
        d.fit(progress=False)
        runs.append(_tensors(d))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not torch.equal(runs[0][0], runs[2][0])


@pytest.mark.parametrize("init", ["fixed", "random"])
def test_checkpoint_resume_is_exact(digits, tmp_path, init):
    cfg = tiny(init=init, nets_per_iteration=2, iterations=7)
    straight = Distiller(cfg, digits)
    straight.fit(progress=False)

    first = Distiller(cfg, digits)
    first.fit(3, progress=False, checkpoint_path=tmp_path / "ckpt.safetensors")
    resumed = Distiller(cfg, digits)
    resumed.load_checkpoint(tmp_path / "ckpt.safetensors")
    assert resumed.iteration == 3
    resumed.fit(progress=False)
    assert all(torch.equal(a, b) for a, b in zip(_tensors(straight), _tensors(resumed)))
    assert straight.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]

    other = Distiller(tiny(seed=9), digits)
    with pytest.raises(ValueError, match="another configuration"):
        other.load_checkpoint(tmp_path / "ckpt.safetensors")


def test_schedule_steps_after_the_optimizer(digits):
    # 1347 training digits, batches of 256: 5 iterations per pass; decay after every pass.
    d = Distiller(tiny(iterations=11, lr=0.01, decay_factor=0.5), digits)
    lrs_used = []
    d.fit(progress=False, callback=lambda dd, st: lrs_used.append(st["lr"]))
    # the lr reported after step i is the one the next step uses; steps 1..5 ran at 0.01
    assert d.sampler.batches_per_epoch == 5
    assert lrs_used[:4] == [0.01] * 4 and lrs_used[4] == 0.005 and lrs_used[9] == 0.0025


def test_non_finite_iterations_are_skipped_then_stop_the_run(digits):
    """A non-finite iteration drops its update (the set keeps its last good values) and the run
    goes on; more than ``nonfinite_skips`` in a row stop it with the last good state."""
    d = Distiller(tiny(nonfinite_skips=2), digits)
    d.fit(2, progress=False)
    good = _tensors(d)
    lr = d.distilled.raw_lrs.detach().clone()
    with torch.no_grad():
        d.distilled.raw_lrs.fill_(float("nan"))
    for it in (2, 3):
        stats = d.step()
        assert stats["skipped"] == 1.0 and d.iteration == it + 1
    assert d.skipped == [2, 3] and d.nonfinite_in_row == 2
    with pytest.raises(NonFiniteLossError, match=r"iteration 4 \(3 iterations in a row"):
        d.step()
    assert torch.equal(d.distilled.data, good[0]) and torch.equal(d.distilled.labels, good[1])
    with torch.no_grad():  # finite again: the run goes on and the count of the row restarts
        d.distilled.raw_lrs.copy_(lr)
    d.step()
    assert d.nonfinite_in_row == 0 and d.skipped == [2, 3]


def test_a_skipped_iteration_resumes_exactly(digits, tmp_path):
    """Skips are part of the state: a run interrupted after one resumes bit-identical."""

    def poisoned(d: Distiller) -> None:  # iteration 3's hypergradient is NaN, once
        step = d._hypergradient_ordered

        def once(w0, x, y, seed):
            grads, loss = step(w0, x, y, seed)
            return grads, (float("nan") if d.iteration == 3 else loss)

        d._hypergradient_ordered = once

    straight = Distiller(tiny(iterations=6), digits)
    poisoned(straight)
    straight.fit(progress=False)
    assert straight.skipped == [3]
    first = Distiller(tiny(iterations=6), digits)
    poisoned(first)
    first.fit(4, progress=False, checkpoint_path=tmp_path / "ckpt.safetensors")
    resumed = Distiller(tiny(iterations=6), digits)
    resumed.resume(tmp_path / "ckpt.safetensors")
    assert resumed.skipped == [3]
    resumed.fit(progress=False)
    assert all(torch.equal(a, b) for a, b in zip(_tensors(straight), _tensors(resumed)))
    assert math.isfinite(resumed.smoothed_loss)
    logged = [h for h in resumed.history if h.get("skipped")]
    assert all(h["outer_loss"] is None for h in logged)


def test_nonfinite_skips_zero_stops_at_the_first(digits):
    d = Distiller(tiny(nonfinite_skips=0), digits)
    with torch.no_grad():
        d.distilled.raw_lrs.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="iteration 0 \\(it; nonfinite_skips=0\\)"):
        d.step()
    with pytest.raises(ValueError, match="nonfinite_skips must be >= 0"):
        tiny(nonfinite_skips=-1)


def test_hard_labels_stay_fixed_and_evaluation_runs(digits):
    d = Distiller(tiny(label_mode="hard"), digits)
    before = d.distilled.labels.clone()
    d.fit(progress=False)
    assert torch.equal(d.distilled.labels, before)
    assert not torch.equal(d.distilled.data, torch.zeros_like(d.distilled.data))
    acc = d.evaluate()
    assert acc.n_nets == 1 and 0.0 <= acc.mean <= 1.0


def test_distillation_learns_on_digits(digits):
    """A short run must beat an untrained distilled set by a wide margin."""
    cfg = tiny(
        model="mlp",
        model_kwargs={"hidden": (32,)},
        steps=1,
        epochs=3,
        iterations=150,
        real_batch_size=512,
        decay_epochs=100,
        lr=0.02,
    )
    d = Distiller(cfg, digits)
    before = d.evaluate().mean
    d.fit(progress=False)
    after = d.evaluate().mean
    assert after > 0.75 and after > before + 0.3, (before, after)


def test_validation_split_keeps_the_best_set(digits, tmp_path):
    cfg = tiny(validation=0.25, validate_every=2, iterations=6)
    d = Distiller(cfg, digits)
    assert d.val_x.shape[0] + d.data.train_x.shape[0] == digits.train_x.shape[0]
    assert set(d.val_y.unique().tolist()) == set(range(10))  # stratified
    d.fit(progress=False, checkpoint_path=tmp_path / "c.safetensors")
    vals = [h["val_accuracy"] for h in d.history if "val_accuracy" in h]
    assert len(vals) == 3 and d.best["val_accuracy"] == max(vals)
    assert torch.equal(d.distilled.data, d.best_tensors["data"])
    assert d.evaluate(split="validation").mean == d.best["val_accuracy"]
    resumed = Distiller(cfg, digits)
    resumed.load_checkpoint(tmp_path / "c.safetensors")
    assert resumed.best == d.best and torch.equal(
        resumed.best_tensors["data"], d.best_tensors["data"]
    )
    with pytest.raises(ValueError, match="no validation split"):
        Distiller(tiny(), digits).evaluate(split="validation")


def test_stop_at_ends_the_run_at_the_first_validation_reaching_it(digits, tmp_path):
    full = Distiller(tiny(validation=0.25, validate_every=2, iterations=10), digits)
    full.fit(progress=False)
    vals = [h["val_accuracy"] for h in full.history if "val_accuracy" in h]
    goal = vals[1]  # reached at iteration 4 at the latest
    first = 2 * next(i + 1 for i, v in enumerate(vals) if v >= goal)
    cfg = tiny(validation=0.25, validate_every=2, iterations=10, stop_at=goal)
    d = Distiller(cfg, digits)
    d.fit(progress=False, checkpoint_path=tmp_path / "c.safetensors")
    assert d.iteration == first < 10 and d.reached["iteration"] == first
    assert d.reached["val_accuracy"] >= goal
    assert torch.equal(d.distilled.data, d.best_tensors["data"])  # the best set, as at the end
    again = Distiller(cfg, digits)
    again.load_checkpoint(tmp_path / "c.safetensors")
    again.fit(progress=False)
    assert again.iteration == first and again.reached == d.reached  # a resume does not go on
    with pytest.raises(ValueError, match="stop_at needs a validation split"):
        tiny(stop_at=0.9)
    with pytest.raises(ValueError, match=r"stop_at is a validation accuracy in \(0, 1\]"):
        tiny(validation=0.1, stop_at=95.0)


def test_resume_on_another_device_type_needs_consent(digits, tmp_path):
    """A CUDA generator's state (16 bytes) cannot continue on the CPU: a clear error, or with
    allow_device_change a re-seeded init stream and everything else restored."""
    from fastdistill.distilled import atomic_save_safetensors, load_safetensors

    cfg = tiny(init="random", nets_per_iteration=2, iterations=5)
    first = Distiller(cfg, digits)
    path = tmp_path / "ckpt.safetensors"
    first.fit(2, progress=False, checkpoint_path=path)
    tensors, meta = load_safetensors(path, "cpu")
    tensors["rng.init"] = torch.zeros(16, dtype=torch.uint8)  # what a CUDA generator saves
    atomic_save_safetensors(tensors, path, meta)

    with pytest.raises(ValueError, match="another device type.*--allow-device-change"):
        Distiller(cfg, digits).load_checkpoint(path)
    moved = Distiller(cfg, digits)
    with pytest.warns(UserWarning, match="re-seeded"):
        moved.load_checkpoint(path, allow_device_change=True)
    assert moved.iteration == 2
    assert all(torch.equal(a, b) for a, b in zip(_tensors(first), _tensors(moved)))
    moved.fit(progress=False)
    assert moved.iteration == 5


def test_checkpoint_from_before_a_new_config_field_still_resumes(digits, tmp_path):
    """Checkpoints written before a DistillConfig field existed resume while the run keeps that
    field's default, and not when it changes it."""
    import json

    from fastdistill.distilled import atomic_save_safetensors, load_safetensors

    cfg = tiny(iterations=4)
    path = tmp_path / "ckpt.safetensors"
    Distiller(cfg, digits).fit(2, progress=False, checkpoint_path=path)
    tensors, meta = load_safetensors(path, "cpu")
    state = json.loads(meta["state"])
    del state["config"]["outer_chunk"]
    atomic_save_safetensors(tensors, path, {**meta, "state": json.dumps(state)})
    d = Distiller(cfg, digits)
    d.load_checkpoint(path)
    assert d.iteration == 2
    with pytest.raises(ValueError, match="another configuration"):
        Distiller(tiny(iterations=4, outer_chunk=64), digits).load_checkpoint(path)


def test_outer_chunk_runs_and_is_validated(digits):
    d = Distiller(tiny(iterations=2, outer_chunk=100), digits)
    d.fit(progress=False)
    assert d.iteration == 2
    with pytest.raises(ValueError, match="outer_chunk"):
        tiny(outer_chunk=0)
