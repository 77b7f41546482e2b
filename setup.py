"""Build script for the fastdistill C++/CUDA extension ``fastdistill._C``.

Metadata lives in pyproject.toml; this file only declares the extension (pattern of
pytorch/extension-cpp). The extension is compiled against the installed torch, so install with
``pip install --no-build-isolation -e .`` (see the Makefile).

Environment:
  FASTDISTILL_NO_EXTENSION=1   pure-Python install: no extension, no torch needed at build time.
  FASTDISTILL_FORCE_CPU=1      build the CPU kernels only, even if nvcc and a CUDA torch exist.
  FASTDISTILL_REQUIRE_CUDA=1   fail unless the CUDA kernels can be built.
  CUDA_HOME / CUDA_PATH        CUDA toolkit root; otherwise found from nvcc on PATH (symlinks and
                               wrapper scripts followed) or /usr/local/cuda*.
  TORCH_CUDA_ARCH_LIST         CUDA archs; default "8.0;9.0+PTX" (A100, H100/H200, PTX for newer).
  MAX_JOBS                     parallel compile jobs (ninja).

A compiler error fails the install: there is no silent fallback to a pure-Python build.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
GENERATED = ROOT / "build" / "generated"
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _log(msg: str) -> None:
    print(f"fastdistill setup: {msg}", file=sys.stderr, flush=True)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _is_toolkit(path: Path) -> bool:
    return (path / "bin" / "nvcc").is_file() and (path / "include" / "cuda_runtime.h").is_file()


def _cuda_version_key(path: Path) -> tuple[int, ...]:
    m = re.search(r"(\d+)\.(\d+)", path.name)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def resolve_cuda_home() -> str | None:
    """CUDA toolkit root: $CUDA_HOME/$CUDA_PATH, else nvcc on PATH, else /usr/local/cuda*."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var)
        if value:
            if not _is_toolkit(Path(value)):
                _log(f"warning: {var}={value} has no bin/nvcc + include/cuda_runtime.h")
            return value
    candidates: list[Path] = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(os.path.realpath(nvcc))
        candidates.append(real.parent.parent)
        # A wrapper script (e.g. `exec /usr/local/cuda-13.0/bin/nvcc "$@"`): read the real path.
        try:
            if real.stat().st_size < 65536:
                text = real.read_text(errors="ignore")
                for m in re.finditer(r"(/[^\s'\"$]+)/bin/nvcc\b", text):
                    candidates.append(Path(m.group(1)))
        except OSError:
            pass
    candidates.append(Path("/usr/local/cuda"))
    candidates += sorted(Path("/usr/local").glob("cuda-*"), key=_cuda_version_key, reverse=True)
    candidates.append(Path("/opt/cuda"))
    for cand in candidates:
        if _is_toolkit(cand):
            return str(cand.resolve())
    return None


def _nvcc_version(cuda_home: str) -> str:
    try:
        out = subprocess.run(
            [str(Path(cuda_home) / "bin" / "nvcc"), "--version"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else ""


def _write_if_changed(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_extensions() -> tuple[list, dict]:
    if _flag("FASTDISTILL_NO_EXTENSION"):
        _log("FASTDISTILL_NO_EXTENSION=1: pure-Python install, ops use the PyTorch reference")
        return [], {}

    # Resolve the toolkit BEFORE torch.utils.cpp_extension is imported: it reads CUDA_HOME at
    # import time and otherwise guesses from `which nvcc` (wrong for wrapper scripts).
    force_cpu = _flag("FASTDISTILL_FORCE_CPU")
    cuda_home = None if force_cpu else resolve_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home

    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError as exc:
        raise SystemExit(
            "fastdistill: building the C++ extension needs torch at build time. Install torch "
            "first, then `pip install --no-build-isolation -e .` (or set "
            f"FASTDISTILL_NO_EXTENSION=1 for a pure-Python install). Import error: {exc}"
        ) from exc

    why_no_cuda = None
    if force_cpu:
        why_no_cuda = "FASTDISTILL_FORCE_CPU=1"
    elif torch.version.cuda is None:
        why_no_cuda = f"torch {torch.__version__} is not a CUDA build"
    elif cuda_home is None:
        why_no_cuda = "no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)"
    with_cuda = why_no_cuda is None
    if not with_cuda and _flag("FASTDISTILL_REQUIRE_CUDA"):
        raise SystemExit(f"fastdistill: FASTDISTILL_REQUIRE_CUDA=1 but {why_no_cuda}")

    cuda_archs = ""
    cuda_version = ""
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        cuda_archs = os.environ["TORCH_CUDA_ARCH_LIST"]
        cuda_version = _nvcc_version(cuda_home)

    openmp = sys.platform.startswith("linux") and torch.backends.openmp.is_available()
    config = "\n".join(
        [
            "// Generated by setup.py; do not edit.",
            "#pragma once",
            f"#define FASTDISTILL_TORCH_VERSION {_c_string(torch.__version__)}",
            f"#define FASTDISTILL_CUDA_ARCHS {_c_string(cuda_archs)}",
            f"#define FASTDISTILL_CUDA_VERSION {_c_string(cuda_version)}",
            "#define FASTDISTILL_WITH_CUDA 1" if with_cuda else "",
            "",
        ]
    )
    _write_if_changed(GENERATED / "fastdistill_build_config.h", config)

    sources = ["csrc/fastdistill.cpp"]
    sources += sorted(str(p.relative_to(ROOT)) for p in (CSRC / "cpu").glob("*.cpp"))
    # Name the C++ string ABI torch was built with instead of trusting the compiler's default: a
    # mismatch links, then corrupts every std::string passed to libc10 (error messages first).
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    cxx_flags = ["-O3", abi]
    link_flags: list[str] = []
    if openmp:
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    kwargs = {
        "name": "fastdistill._C",
        "include_dirs": [str(CSRC / "include"), str(GENERATED)],
        "extra_link_args": link_flags,
    }
    if with_cuda:
        sources += sorted(str(p.relative_to(ROOT)) for p in (CSRC / "cuda").glob("*.cpp"))
        sources += sorted(str(p.relative_to(ROOT)) for p in (CSRC / "cuda").glob("*.cu"))
        ext = CUDAExtension(
            sources=sources,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo", abi]},
            **kwargs,
        )
        _log(
            f"building fastdistill._C with CUDA {cuda_version} (CUDA_HOME={cuda_home}, "
            f"TORCH_CUDA_ARCH_LIST={cuda_archs}) against torch {torch.__version__}"
        )
    else:
        ext = CppExtension(sources=sources, extra_compile_args={"cxx": cxx_flags}, **kwargs)
        _log(f"building fastdistill._C CPU-only ({why_no_cuda}) against torch {torch.__version__}")
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = build_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
