"""DistilledDataset (a torch Dataset over a saved set) and train_on (a user's own module)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import fastdistill
from fastdistill import DistilledDataset, DistilledSet, train_on
from fastdistill.engine import FlatModel
from fastdistill.evaluate import accuracy, evaluate_distilled, train_on_distilled
from fastdistill.models import MLP


def tiny_set(**kw) -> DistilledSet:
    d = DistilledSet.initialize(
        num_classes=10,
        sample_shape=(1, 8, 8),
        steps=3,
        epochs=2,
        distill_lr=0.05,
        label_init="smoothed",
        generator=torch.Generator().manual_seed(0),
        **kw,
    )
    d.raw_lrs += torch.linspace(-0.5, 0.5, d.total_steps)  # distinct step sizes
    return d


def test_exported_from_the_package():
    assert {"DistilledDataset", "train_on"} <= set(fastdistill.__all__)


def test_dataset_items_follow_step_order(tmp_path):
    d = tiny_set()
    path = d.save(tmp_path / "distilled.safetensors")
    for source in (d, path, tmp_path):
        ds = DistilledDataset(source)
        assert len(ds) == d.num_samples == 30
        x, y, s = ds[13]
        assert s == 1 and torch.equal(x, d.data[1, 3]) and torch.equal(y, d.labels[1, 3])
        assert ds[-1][2] == 2 and torch.equal(ds.lrs, d.lrs) and ds.epochs == 2
    with pytest.raises(IndexError):
        ds[30]


def test_dataloader_reads_the_whole_set_in_order():
    d = tiny_set()
    batches = list(DataLoader(DistilledDataset(d), batch_size=7))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    steps = torch.cat([b[2] for b in batches])
    assert torch.equal(x, d.data.reshape(30, 1, 8, 8))
    assert torch.equal(y, d.labels.reshape(30, 10))
    assert torch.equal(steps, torch.arange(3).repeat_interleave(10))


def _module_accuracy(module, x, y) -> float:
    with torch.no_grad():
        return float((module(x).argmax(-1) == y).double().mean())


def test_train_on_matches_evaluate_distilled_for_the_same_seed():
    from fastdistill.data import load_image_dataset

    data = load_image_dataset("digits")
    d = tiny_set()
    acc = evaluate_distilled(
        d,
        FlatModel(MLP(1, 10, 8, hidden=(16,))),
        data.test_x,
        data.test_y,
        init="random",
        n_nets=1,
        generator=torch.Generator().manual_seed(3),
    )
    net = train_on(d, MLP(1, 10, 8, hidden=(16,)), generator=torch.Generator().manual_seed(3))
    assert _module_accuracy(net, data.test_x, data.test_y) == pytest.approx(acc.mean, abs=1e-9)
    assert acc.mean > 0.1  # the set trains something (not a constant net)


def test_train_on_starts_from_the_module_and_writes_its_weights():
    torch.manual_seed(0)
    d = tiny_set()
    net = MLP(1, 10, 8, hidden=(16,))
    flat = FlatModel(MLP(1, 10, 8, hidden=(16,)))
    w0 = FlatModel(net).flatten_module().unsqueeze(0)
    want = train_on_distilled(flat, w0, d)[0]
    assert train_on(d, net) is net
    assert torch.allclose(FlatModel(net).flatten_module(), want)
    x, y = torch.randn(20, 1, 8, 8), torch.randint(0, 10, (20,))
    assert float(accuracy(flat, want[None], x, y)[0]) == _module_accuracy(net, x, y)


def test_train_on_epochs_replays_the_first_epochs_and_checks_the_range():
    d = tiny_set()
    net = MLP(1, 10, 8, hidden=(16,))
    w0 = FlatModel(net).flatten_module().unsqueeze(0)
    one = DistilledSet(d.data, d.labels, d.raw_lrs[:3], d.classes, 1, d.label_kind)
    want = train_on_distilled(FlatModel(MLP(1, 10, 8, hidden=(16,))), w0, one)[0]
    train_on(d, net, epochs=1)
    assert torch.allclose(FlatModel(net).flatten_module(), want)
    with pytest.raises(ValueError, match="epochs must be in"):
        train_on(d, net, epochs=3)


def test_train_on_moves_the_set_to_the_module_dtype():
    d = tiny_set()
    net = train_on(d, MLP(1, 10, 8, hidden=(16,)).double(), generator=torch.Generator())
    assert next(net.parameters()).dtype == torch.float64
