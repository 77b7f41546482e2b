"""Backend choice: backend_info, use_kernels, last_backend, forced modes, missing extension."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fastdistill import ops
from fastdistill.ops import reference

REPO = Path(__file__).resolve().parents[2]

INFO_KEYS = {
    "extension_loaded",
    "malloc",
    "reason",
    "extension_path",
    "built_with_cuda",
    "cuda_archs",
    "cuda_version_built",
    "torch_version_built",
    "torch_version",
    "cpu_parallel",
    "cuda_available",
    "forced_backend",
    "kernel_devices",
}


def run_python(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter with extra env vars; it prints one JSON line last."""
    full_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FASTDISTILL_BACKEND", "FASTDISTILL_DISABLE_EXTENSION")
    }
    full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=False,
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


USE_OPS = """
    import json, sys, torch
    import fastdistill.ops as ops
    from fastdistill.ops import reference
    w, g = torch.randn(3, 40, dtype=torch.float64), torch.randn(3, 40, dtype=torch.float64)
    raw = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    out = ops.inner_update(w, g, raw)
    assert torch.allclose(out, reference.inner_update(w, g, raw))
    out.sum().backward()
    v, dlr = ops.adjoint_update(w, g, g, raw.detach())
    assert torch.allclose(dlr, -(g * w).sum())
    info = ops.backend_info()
    print(json.dumps({
        "inner": ops.last_backend("inner_update")._asdict(),
        "adjoint": ops.last_backend("adjoint_update")._asdict(),
        "loaded": info["extension_loaded"],
        "reason": info["reason"],
        "forced": info["forced_backend"],
        "C_imported": "fastdistill._C" in sys.modules,
        "grad": raw.grad.item(),
    }))
"""


def test_backend_info(kernels):
    info = ops.backend_info()
    assert set(info) == INFO_KEYS
    assert info["extension_loaded"] is True and info["reason"] is None
    assert info["torch_version"] == torch.__version__
    assert info["torch_version_built"] == torch.__version__
    assert "cpu" in info["kernel_devices"]["inner_update"]
    assert info["forced_backend"] == "auto"  # set by the autouse fixture
    if info["built_with_cuda"]:
        assert info["cuda_archs"] and "cuda" in info["kernel_devices"]["adjoint_update"]
    json.dumps(info)  # plain data


def test_use_kernels(kernels):
    assert ops.use_kernels(torch.device("cpu")) == (True, "compiled cpu kernel")
    ok, reason = ops.use_kernels("cuda", "adjoint_update")
    assert ok == ops.backend_info()["built_with_cuda"]
    assert ok or "without CUDA" in reason
    assert ops.use_kernels("cpu", "no_such_op")[0] is False
    ops.set_backend("reference")
    ok, reason = ops.use_kernels("cpu")
    assert not ok and "reference backend forced" in reason


def test_set_backend_reference_and_back(kernels):
    w, g = torch.randn(2, 9), torch.randn(2, 9)
    raw = torch.tensor(0.1)
    ops.set_backend("reference")
    ref_out = ops.inner_update(w, g, raw)
    choice = ops.last_backend("inner_update")
    assert choice.backend == "reference" and "forced" in choice.reason
    ops.set_backend("auto")
    torch.testing.assert_close(ops.inner_update(w, g, raw), ref_out)
    assert ops.last_backend("inner_update").backend == "kernel"
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.set_backend("fast")


def test_reference_softplus_is_exact():
    x = torch.tensor([-800.0, -30.0, 0.0, 20.0, 25.0, 800.0], dtype=torch.float64)
    expected = torch.tensor(
        [
            0.0,
            9.357622968840175e-14,
            0.6931471805599453,
            20.000000002061153,
            25.000000000013888,
            800.0,
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(reference.softplus(x), expected, rtol=1e-12, atol=0)


def test_env_reference_forces_fallback():
    out = run_python(USE_OPS, FASTDISTILL_BACKEND="reference")
    assert out["forced"] == "reference"
    for op in ("inner", "adjoint"):
        assert out[op]["backend"] == "reference"
        assert "FASTDISTILL_BACKEND=reference" in out[op]["reason"]


def test_extension_disabled_by_env():
    out = run_python(USE_OPS, FASTDISTILL_DISABLE_EXTENSION="1")
    assert out["loaded"] is False and "FASTDISTILL_DISABLE_EXTENSION" in out["reason"]
    assert out["C_imported"] is False
    assert out["inner"]["backend"] == out["adjoint"]["backend"] == "reference"
    assert "extension not loaded" in out["inner"]["reason"]


def test_extension_missing_module():
    """As in a pure-Python install: importing fastdistill._C fails; the ops still work."""
    block = """
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "fastdistill._C":
                    raise ModuleNotFoundError("No module named 'fastdistill._C'", name=name)
        sys.meta_path.insert(0, Block())
    """
    out = run_python(textwrap.dedent(block) + textwrap.dedent(USE_OPS))
    assert out["loaded"] is False and "not built" in out["reason"]
    assert out["inner"]["backend"] == "reference"


def test_extension_broken_module():
    """An extension that fails to import (e.g. built against another torch) is reported."""
    block = """
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "fastdistill._C":
                    raise ImportError("undefined symbol: _ZN3c10whatever")
        sys.meta_path.insert(0, Block())
    """
    out = run_python(textwrap.dedent(block) + textwrap.dedent(USE_OPS))
    assert out["loaded"] is False
    assert "undefined symbol" in out["reason"] and "make build" in out["reason"]
    assert out["inner"]["backend"] == "reference"


def test_env_kernels_without_extension_raises():
    code = """
        import json, torch
        import fastdistill.ops as ops
        try:
            ops.inner_update(torch.zeros(2, 2), torch.zeros(2, 2), 0.1)
        except RuntimeError as exc:
            print(json.dumps({"error": str(exc)}))
        else:
            print(json.dumps({"error": None}))
    """
    out = run_python(code, FASTDISTILL_BACKEND="kernels", FASTDISTILL_DISABLE_EXTENSION="1")
    assert out["error"] and "FASTDISTILL_BACKEND=kernels" in out["error"]


def test_invalid_env_backend(monkeypatch):
    monkeypatch.setenv("FASTDISTILL_BACKEND", "turbo")
    ops.set_backend(None)  # read the environment
    with pytest.raises(ValueError, match="FASTDISTILL_BACKEND must be one of"):
        ops.get_backend()
