"""Every user mistake is one line, ``fastdistill: error: ...``, exit code 2, no traceback and no
partial output; ``--debug`` shows the traceback. A table of the mistakes users make, then
property-based inputs (hypothesis) over ``--set`` keys and values."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastdistill.cli import main
from fastdistill.config import DistillConfig

BASE = ["distill", "--preset", "digits-lenet-fixed-10", "--iterations", "1", "--quiet"]


def _run(argv, capsys):
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


def _assert_one_line(rc, lines, *needles):
    assert rc == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("fastdistill: error: "), lines
    assert "Traceback" not in lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])


CASES = {
    "unknown --set key": (["--set", "nope=1"], ["nope"]),
    "wrong --set type": (["--set", "lr=abc"], ["lr"]),
    "--set without =": (["--set", "lr"], ["KEY=VALUE"]),
    "--checkpoint-every 0": (["--checkpoint-every", "0"], ["--checkpoint-every"]),
    "--threads -3": (["--threads", "-3"], ["--threads"]),
    "--eval-nets 0": (["--eval-nets", "0"], ["--eval-nets"]),
    "--device cuda without a GPU": (["--device", "cuda"], ["cuda"]),
    "unknown preset": (["--preset", "nosuch"], ["nosuch"]),
    "negative seed": (["--set", "seed=-1"], ["seed"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_distill_arguments(name, tmp_path, capsys):
    extra, needles = CASES[name]
    out = tmp_path / "run"
    argv = BASE + ["--out", str(out)] + extra
    if name == "--device cuda without a GPU":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    rc, lines = _run(argv, capsys)
    _assert_one_line(rc, lines, *needles)
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())


def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    rc, lines = _run(BASE + ["--out", str(f)], capsys)
    _assert_one_line(rc, lines, str(f))


def test_resume_without_checkpoint_and_resume_auto(tmp_path, capsys):
    out = tmp_path / "run"
    rc, lines = _run(BASE + ["--out", str(out), "--resume"], capsys)
    _assert_one_line(rc, lines, "--resume auto")


def test_debug_shows_the_traceback(tmp_path, capsys):
    capsys.readouterr()
    rc = main(BASE + ["--out", str(tmp_path / "r"), "--set", "nope=1", "--debug"])
    err = capsys.readouterr().err
    assert (
        rc == 2
        and "Traceback" in err
        and err.rstrip().splitlines()[-1].startswith("fastdistill: error: ")
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["evaluate", "MISSING"], "MISSING"),
        (["show", "MISSING"], "MISSING"),
        (["bench", "Z"], "Z"),
    ],
)
def test_other_commands(argv, needle, tmp_path, capsys):
    argv = [str(tmp_path / a) if a == "MISSING" else a for a in argv]
    rc, lines = _run(argv, capsys)
    _assert_one_line(rc, lines, needle)


def test_pickle_file_is_named(tmp_path, capsys):
    import pickle

    bad = tmp_path / "set.safetensors"
    bad.write_bytes(pickle.dumps({"a": 1}))
    rc, lines = _run(["evaluate", str(bad)], capsys)
    _assert_one_line(rc, lines, str(bad))


FIELDS = {f.name for f in dataclasses.fields(DistillConfig)}
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=4,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.sampled_from(sorted(FIELDS)) | st.text(min_size=1, max_size=10), value=json_values)
def test_any_set_value_is_accepted_or_one_line(key, value, tmp_path_factory, capsys):
    """A generated ``--set KEY=VALUE`` either builds a valid config or fails in one line
    naming the key; the config check runs before anything is written."""
    if "=" in key or key.startswith("-") or not key.strip():
        return
    text = json.dumps(value) if not isinstance(value, str) else value
    try:
        DistillConfig().replace(**{key: value})
        return  # a valid setting: running it is another test's job
    except ValueError:
        pass
    except TypeError:
        pass
    out = tmp_path_factory.mktemp("run") / "out"
    rc, lines = _run(BASE + ["--out", str(out), "--set", f"{key}={text}"], capsys)
    _assert_one_line(rc, lines)
    assert not out.exists() or not any(out.iterdir())
