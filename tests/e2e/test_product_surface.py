"""Configs, metrics.jsonl, progress off a terminal, --estimate, presets, show, export ->
ImageFolder -> train_on, and the user's own image folder and text table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastdistill.config import PRESETS, load_config_file, resolve_config
from fastdistill.runlog import METRICS_KEYS, LineProgress, read_metrics

from .conftest import ITERATIONS, TINY, distill_args, one_error_line, run_in_process

ROOT = Path(__file__).resolve().parents[2]
RUN_FLAGS = ["--checkpoint-every", "1", "--device", "cpu", "--threads", "1", "--quiet"]


def _config_of(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())["config"]


# -- configs ----------------------------------------------------------------------------------
def test_config_toml_round_trip_gives_the_same_run(reference_run, tmp_path):
    """OUT/config.toml read back is the run's configuration, and running it again gives the
    same distilled set, byte for byte."""
    _, preset = load_config_file(reference_run / "config.toml")
    config, _ = resolve_config(preset, reference_run / "config.toml")
    assert json.loads(json.dumps(config.to_dict())) == _config_of(reference_run)
    again = tmp_path / "again"
    args = ["distill", "--config", str(reference_run / "config.toml"), "--out", str(again)]
    assert run_in_process([*args, *RUN_FLAGS]) == 0
    assert _config_of(again) == _config_of(reference_run)
    assert (again / "distilled.safetensors").read_bytes() == (
        reference_run / "distilled.safetensors"
    ).read_bytes()
    assert (again / "config.toml").read_text() == (reference_run / "config.toml").read_text()


def test_precedence_preset_file_options_set(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'preset = "digits-lenet-fixed-10"\niterations = 7\nseed = 3\ndecay_epochs = 11\n'
    )
    config, name = resolve_config(None, path, {"seed": 5})
    assert name == "digits-lenet-fixed-10"
    assert (config.iterations, config.seed, config.decay_epochs) == (7, 5, 11)
    base = PRESETS["digits-lenet-fixed-10"].config
    assert config.replace(iterations=None, seed=base.seed, decay_epochs=base.decay_epochs) == base
    # --preset wins over the file's preset key
    config, name = resolve_config("mnist-lenet-fixed-5", path)
    assert name == "mnist-lenet-fixed-5" and config.dataset == "mnist" and config.iterations == 7


def test_yaml_and_json_configs_read_like_toml(tmp_path):
    yaml = pytest.importorskip("yaml")
    fields = {"preset": "digits-lenet-fixed-10", "iterations": 4, "lr": 0.02}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(fields))
    (tmp_path / "a.json").write_text(json.dumps(fields))
    (tmp_path / "a.toml").write_text(
        'preset = "digits-lenet-fixed-10"\niterations = 4\nlr = 0.02\n'
    )
    configs = [resolve_config(None, tmp_path / f"a.{s}")[0] for s in ("yaml", "json", "toml")]
    assert configs[0] == configs[1] == configs[2]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("nope = 1\n", "'nope'"),
        ('iterations = "many"\n', "iterations"),
        ("iterations = \n", "not valid TOML"),
        ('preset = "no-such-preset"\n', "unknown preset"),
        ('unset = ["seq_len"]\nseq_len = 3\n', "seq_len"),
    ],
)
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code = run_in_process(["distill", "--config", str(path), "--out", str(tmp_path / "o")])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert expected in line
    assert not (tmp_path / "o").exists()


def test_distill_needs_a_preset_or_a_config(tmp_path, capsys):
    assert run_in_process(["distill", "--out", str(tmp_path / "o")]) == 2
    assert "--preset NAME" in one_error_line(capsys.readouterr().err)


# -- metrics and progress ---------------------------------------------------------------------
def test_metrics_jsonl_has_one_row_per_logged_iteration(reference_run):
    rows = read_metrics(reference_run)
    # every 10 iterations, every validation (validate_every=4) and the last one
    assert [r["iteration"] for r in rows] == [4, 8, 10, 12]
    for r in rows:
        assert set(METRICS_KEYS) <= set(r)
        assert isinstance(r["outer_loss"], float) and r["lr"] > 0
        assert len(r["inner_lrs"]) == PRESETS["digits-lenet-fixed-10"].config.total_steps
    assert [r["iteration"] for r in rows if "val_accuracy" in r] == [4, 8, 12]
    times = [r["time_s"] for r in rows]
    assert times == sorted(times) and times[0] > 0
    history = json.loads((reference_run / "report.json").read_text())["history"]
    val = {h["iteration"]: h["val_accuracy"] for h in history if "val_accuracy" in h}
    assert {r["iteration"]: r["val_accuracy"] for r in rows if "val_accuracy" in r} == val


def test_progress_off_a_terminal_is_plain_lines(tmp_path):
    out = tmp_path / "run"
    args = [a for a in distill_args(out, "--progress-every", "0") if a != "--quiet"]
    proc = subprocess.run(
        [sys.executable, "-m", "fastdistill", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\r" not in proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("distill ")]
    assert len(lines) >= ITERATIONS  # --progress-every 0: a line per iteration, plus the last
    assert lines[-1].startswith(f"distill {ITERATIONS}/{ITERATIONS} (100%)")


def test_line_progress_writes_every_n_seconds():
    clock = iter([0.0, 1.0, 2.0, 31.0, 32.0, 61.5, 62.0]).__next__
    lines: list[str] = []

    class Sink:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    bar = LineProgress(10, every=30.0, file=Sink(), clock=clock)
    for _ in range(5):
        bar.update()
    bar.close()
    assert len(lines) == 3  # at t=31 and t=61.5, and the last line at close
    assert all(ln.endswith("\n") and "\r" not in ln for ln in lines)
    assert lines[0].startswith("distill 3/10 (30%)")


# -- estimates and presets --------------------------------------------------------------------
def test_estimate_prints_a_positive_projection_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    args = ["distill", *TINY, "--out", str(out), "--estimate", "2"]
    assert run_in_process(args) == 0
    text = capsys.readouterr().out
    assert "total about" in text
    per_it = float(text.split(" iterations x ")[1].split(" s")[0])
    assert per_it > 0
    assert f"{ITERATIONS} iterations x" in text
    assert not out.exists()


def test_presets_show_size_and_measured_time(capsys):
    assert run_in_process(["presets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(PRESETS)
    demo = rows["digits-lenet-fixed-10"]
    assert int(demo["T"]) == PRESETS["digits-lenet-fixed-10"].config.total_steps
    assert int(demo["samples"]) == 10 and float(demo["s_per_iteration"]) > 0


# -- show, export, train_on -------------------------------------------------------------------
def test_show_plots_the_metrics_also_while_a_run_is_in_progress(reference_run, tmp_path):
    import shutil

    assert run_in_process(["show", str(reference_run), "--out", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f" / "metrics.png").is_file()
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(reference_run / "metrics.jsonl", partial / "metrics.jsonl")
    assert run_in_process(["show", str(partial)]) == 0
    assert (partial / "figures" / "metrics.png").is_file()


def _evaluate_json(run: Path, capsys, *extra: str) -> dict:
    capsys.readouterr()
    assert run_in_process(["evaluate", str(run), "--device", "cpu", *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_export_imagefolder_then_train_on_matches_evaluate(reference_run, tmp_path, capsys):
    """The exported PNG folder, read back with torchvision's ImageFolder, trains a net with
    `train_on` to the accuracy `fastdistill evaluate` gives the original set (same seed)."""
    from torchvision.datasets import ImageFolder

    from fastdistill import DistilledSet, train_on
    from fastdistill.data import reload_dataset
    from fastdistill.export import read_imagefolder
    from fastdistill.models import build_model_for

    folder = tmp_path / "png"
    assert run_in_process(["export", str(reference_run), "--format", "imagefolder",
                           "--out", str(folder)]) == 0  # fmt: skip
    original = DistilledSet.load(reference_run / "distilled.safetensors")
    images = ImageFolder(str(folder))
    assert len(images) == original.num_samples
    assert len(images.classes) == original.labels.shape[-1]
    side = json.loads((folder / "labels.json").read_text())
    back = read_imagefolder(folder)
    lo, hi = side["pixel_range"]
    std = min(side["std"])
    assert (back.data - original.data).abs().max() <= 1.001 * (hi - lo) / 255 / 2 / std + 1e-5
    assert torch.allclose(back.labels, original.labels)
    assert torch.allclose(back.lrs, original.lrs, rtol=1e-5)

    expected = _evaluate_json(reference_run, capsys, "--init", "random", "--nets", "1")
    data = reload_dataset(original.meta["dataset"])
    accuracies = []
    for s in (back, original):
        net = build_model_for("lenet", data, **original.meta["model"]["kwargs"])
        net = train_on(s, net, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            pred = net(data.model_inputs(data.test_x)).argmax(-1)
        accuracies.append((pred == data.test_y).double().mean().item())
    assert accuracies[1] == pytest.approx(expected["test_accuracy"]["mean"], abs=1e-12)
    assert abs(accuracies[0] - accuracies[1]) <= 0.02, accuracies


def test_train_on_with_the_fixed_init_matches_fixed_evaluation(reference_run, capsys):
    from fastdistill import DistilledSet, train_on
    from fastdistill.data import reload_dataset
    from fastdistill.models import build_model_for

    d = DistilledSet.load(reference_run / "distilled.safetensors")
    data = reload_dataset(d.meta["dataset"])
    net = build_model_for("lenet", data, **d.meta["model"]["kwargs"])
    net = train_on(d, net, init_weights=d.init_weights)
    with torch.no_grad():
        acc = (net(data.model_inputs(data.test_x)).argmax(-1) == data.test_y).double().mean()
    expected = _evaluate_json(reference_run, capsys)["test_accuracy"]["mean"]
    assert acc.item() == pytest.approx(expected, abs=1e-12)


# -- the user's own data ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from digits_image_folder import write_digits_folder
    finally:
        sys.path.pop(0)
    out = tmp_path_factory.mktemp("own") / "digits"
    write_digits_folder(out)
    return out


def test_own_image_folder_distills_and_evaluates(digits_folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = [*distill_args(out), "--iterations", "60", "--set", "image_size=28",
            "--set", f"dataset=imagefolder:{digits_folder}"]  # fmt: skip
    assert run_in_process(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["name"] == f"imagefolder:{digits_folder.resolve()}"
    assert report["test_accuracy"]["mean"] > 0.25  # 60 iterations: 45% here, chance is 10%
    again = _evaluate_json(out, capsys)  # the set reloads its folder by name
    assert again["test_accuracy"]["mean"] == pytest.approx(report["test_accuracy"]["mean"])


def _tiny_folder(root: Path, sizes: dict[str, list[int]]) -> Path:
    from PIL import Image

    for name, dims in sizes.items():
        (root / name).mkdir(parents=True)
        for i, d in enumerate(dims):
            Image.new("L", (d, d), color=i * 20).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "sizes, expected",
    [
        ({"a": [8, 8, 8]}, "at least 2"),
        ({"a": [8, 8, 8], "b": []}, "'b'"),
        ({"a": [8, 8, 8], "b": [8]}, "least 2 to hold out"),
        ({"a": [8, 8, 8], "b": [8, 9, 8]}, "image_size"),  # with --set image_size=null
    ],
)
def test_own_image_folder_checks_are_one_line_errors(tmp_path, capsys, sizes, expected):
    folder = _tiny_folder(tmp_path / "imgs", sizes)
    args = [
        "distill",
        *TINY,
        "--out",
        str(tmp_path / "o"),
        "--set",
        f"dataset=imagefolder:{folder}",
        "--set",
        "image_size=null",
    ]
    assert run_in_process(args) == 2
    assert expected in one_error_line(capsys.readouterr().err)


def test_own_text_table_loads_with_a_glove_file(tmp_path):
    from fastdistill.data import load_dataset

    words = ["good", "great", "fine", "bad", "awful", "poor", "movie", "film", "the", "a"]
    gen = torch.Generator().manual_seed(0)
    vecs = torch.randn(len(words), 6, generator=gen)
    (tmp_path / "vec.txt").write_text(
        "".join(
            f"{w} {' '.join(f'{v:.4f}' for v in vecs[i].tolist())}\n" for i, w in enumerate(words)
        )
    )
    rows = ["label,text"]
    for i in range(20):
        rows.append(f"pos,the {words[i % 3]} movie")
        rows.append(f"neg,a {words[3 + i % 3]} film")
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset(f"csv:{tmp_path / 'reviews.csv'}", seq_len=4, vectors=tmp_path / "vec.txt")
    assert data.num_classes == 2
    assert len(data.train_y) == 32 and len(data.test_y) == 8  # 80/20 per class
    assert data.describe()["kind"] == "text"
    (tmp_path / "one.csv").write_text("label,text\npos,the good movie\npos,a fine film\n")
    with pytest.raises(ValueError, match="need at least 2"):
        load_dataset(f"csv:{tmp_path / 'one.csv'}", seq_len=4, vectors=tmp_path / "vec.txt")
