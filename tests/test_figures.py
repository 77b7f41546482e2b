"""Figures: files written (PNG + PDF, one image grid per step), ``show`` end to end, clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fastdistill.cli import main
from fastdistill.decode import DecodedSentence, format_decoded, write_decoded
from fastdistill.distilled import DistilledSet
from fastdistill.figures import (
    denormalize,
    label_matrix,
    load_decoded,
    plot_accuracy_vs_samples,
    plot_distilled_images,
    plot_label_table,
    plot_training_curves,
    show_run,
)
from fastdistill.figures._common import label_caption

MAGIC = {".png": b"\x89PNG", ".pdf": b"%PDF"}


def assert_figures(paths: list[Path], stems: list[str]) -> None:
    """Exactly ``stem.png`` and ``stem.pdf`` for each stem, each a real, non-empty file."""
    expected = {f"{s}{ext}" for s in stems for ext in MAGIC}
    assert {p.name for p in paths} == expected
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 1000, p
        assert data.startswith(MAGIC[p.suffix]), p


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    """A real two-step digits run, three outer iterations (a few seconds on one thread)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run") / "digits"
    args = ["distill", "--preset", "digits-lenet-fixed-10", "--iterations", "3", "--quiet"]
    args += ["--out", str(out), "--device", "cpu", "--set", "steps=2", "--set", "eval_nets=1"]
    assert main(args) == 0
    return out


def test_show_renders_a_real_run_end_to_end(image_run, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["show", str(image_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    paths = sorted(out.iterdir())
    assert sorted(Path(p) for p in printed) == paths
    assert_figures(paths, ["images_step0", "images_step1", "labels", "metrics", "training"])


def test_show_run_defaults_to_run_figures_folder(image_run):
    paths = show_run(image_run)
    assert all(p.parent == image_run / "figures" for p in paths)
    assert len(paths) == 10  # 5 figures (PNG + PDF), metrics.jsonl curves among them


def text_set(binary: bool, steps: int = 1) -> DistilledSet:
    k = 2 if binary else 4
    d = DistilledSet.initialize(
        num_classes=k,
        sample_shape=(7, 5),
        steps=steps,
        epochs=1,
        binary=binary,
        label_init="random",
        generator=torch.Generator().manual_seed(0),
    )
    names = ["neg", "pos"] if binary else ["ABBR", "DESC", "HUM", "LOC"]
    d.meta = {"dataset": {"kind": "text", "name": "toy", "class_names": names}}
    return d


def sentences_of(d: DistilledSet) -> list[DecodedSentence]:
    S, N = d.labels.shape[:2]
    return [
        DecodedSentence(
            s, i, " ".join(["word"] * (5 + 40 * i)), d.labels[s, i].reshape(-1).tolist(), []
        )
        for s in range(S)
        for i in range(N)
    ]


@pytest.mark.parametrize("binary", [False, True])
def test_text_run_gets_decoded_table(tmp_path, binary):
    d = text_set(binary)
    run = tmp_path / "run"
    d.save(run / "distilled.safetensors")
    write_decoded(sentences_of(d), run)
    with pytest.warns(UserWarning, match="report.json"):
        paths = show_run(run)
    assert_figures(paths, ["images_step0", "labels", "decoded"])


def test_decoded_txt_fallback_takes_label_rows_from_the_set(tmp_path):
    d = text_set(False, steps=2)
    (tmp_path / "decoded.txt").write_text(format_decoded(sentences_of(d)))
    rows = load_decoded(tmp_path, d)
    assert [(r.step, r.index) for r in rows] == [(s, i) for s in range(2) for i in range(4)]
    assert rows[5].label == pytest.approx(d.labels[1, 1].tolist())
    assert rows[0].text == "word " * 4 + "word"
    assert load_decoded(tmp_path / "nothing-here", d) is None


def test_one_grid_per_step_zero_padded(tmp_path):
    d = DistilledSet.initialize(num_classes=3, sample_shape=(3, 6, 6), steps=11, epochs=1)
    d.meta = {"dataset": {"kind": "image", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}}
    paths = plot_distilled_images(d, tmp_path)
    assert_figures(paths, [f"images_step{s:02d}" for s in range(11)])


def test_denormalize_undoes_the_stored_normalisation():
    img = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    mean, std = [0.1, 0.5, 0.9], [0.3, 0.2, 0.1]
    x = (img - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = denormalize(x, mean, std)
    assert out.shape == (2, 4, 5, 3)
    assert torch.allclose(torch.from_numpy(out).permute(0, 3, 1, 2).float(), img, atol=1e-6)
    clamped = denormalize(torch.full((1, 1, 2, 2), 50.0), [0.5], [0.5])
    assert clamped.max() == 1.0
    rescaled = denormalize(torch.tensor([[[[-3.0, 1.0]]]]), None, None)
    assert rescaled.ravel().tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="one per channel"):
        denormalize(x, [0.5], [0.5])


def test_caption_lists_top_three_classes_best_first():
    row = torch.tensor([0.1, 2.5, -1.0, 0.7, 1.2])
    names = ["a", "b", "c", "d", "e"]
    assert label_caption(row, names, 3, binary=False) == "b: 2.50\ne: 1.20\nd: 0.70"
    assert label_caption(torch.tensor([-0.25]), names, binary=True) == "label -0.25"


def test_label_table_binary_and_multiclass(tmp_path):
    d = text_set(True, steps=2)
    assert label_matrix(d).shape == (2 * 2, 1)
    assert_figures(plot_label_table(d, tmp_path / "b"), ["labels"])
    many = DistilledSet.initialize(num_classes=50, sample_shape=(2,), steps=2, epochs=1)
    assert label_matrix(many).shape == (100, 50)
    assert_figures(plot_label_table(many, tmp_path / "m", stem="big"), ["big"])


def test_accuracy_vs_samples(tmp_path):
    series = {
        "SLDD fixed": [(1, 0.3, 0.0), (5, 0.9156, 0.0), (10, 0.9613, 0.0), (100, 0.986, 0.0)],
        "SLDD random": [(100, 0.8275, 0.0275), (10, 0.6, 0.05)],
        "DD fixed": [(10, 0.9376), (100, 0.966, None)],
    }
    paths = plot_accuracy_vs_samples(series, tmp_path / "acc.png", full_data=0.99, title="MNIST")
    assert_figures(paths, ["acc"])
    with pytest.raises(ValueError, match="fraction"):
        plot_accuracy_vs_samples({"x": [(10, 96.1, 0.0)]}, tmp_path / "bad")
    with pytest.raises(ValueError, match="empty"):
        plot_accuracy_vs_samples({"x": []}, tmp_path / "bad")
    with pytest.raises(ValueError, match="invalid point"):
        plot_accuracy_vs_samples({"x": [(10, math.nan, 0.0)]}, tmp_path / "bad")
    assert not list(tmp_path.glob("bad*"))


def test_training_curves(tmp_path):
    history = [{"iteration": i, "outer_loss": 2.3 / i, "smoothed_loss": 2.3 / i} for i in (1, 2, 3)]
    history.append({"iteration": 3, "val_accuracy": 0.5})
    assert_figures(plot_training_curves(history, tmp_path / "t", test_accuracy=0.6), ["t"])
    assert_figures(plot_training_curves(history[:3], tmp_path / "loss_only"), ["loss_only"])
    with pytest.raises(ValueError, match="history"):
        plot_training_curves([], tmp_path / "none")


def test_show_errors_are_clear(tmp_path, capsys):
    assert main(["show", str(tmp_path / "missing")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert main(["show", str(tmp_path)]) == 2
    assert "no distilled.safetensors" in capsys.readouterr().err
    (tmp_path / "distilled.safetensors").write_bytes(b"not a safetensors file")
    assert main(["show", str(tmp_path)]) == 2
    assert "is not a safetensors file" in capsys.readouterr().err
    text_set(False).save(tmp_path / "distilled.safetensors")
    (tmp_path / "report.json").write_text("{ truncated")
    assert main(["show", str(tmp_path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "figures").exists()


def test_report_without_history_skips_curves(tmp_path):
    d = DistilledSet.initialize(num_classes=3, sample_shape=(1, 4, 4), steps=1, epochs=1)
    d.save(tmp_path / "distilled.safetensors")
    report = {"preset": "toy", "test_accuracy": {"mean": 0.5, "std": 0.1, "n_nets": 4}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert_figures(show_run(tmp_path, tmp_path / "f"), ["images_step0", "labels"])
