"""``LayerKind`` (Python) and ``csrc/include/fastdistill/layer_kinds.h`` (C++) are one table."""

from __future__ import annotations

import re
from pathlib import Path

from fastdistill.engine.fused import LayerKind

HEADER = Path(__file__).resolve().parents[2] / "csrc/include/fastdistill/layer_kinds.h"


def _cpp_kinds() -> dict[str, int]:
    text = HEADER.read_text(encoding="utf-8")
    body = text[text.index("enum class LayerKind") :]
    body = body[: body.index("};")]
    return {m[1]: int(m[2]) for m in re.finditer(r"^\s*(\w+)\s*=\s*(\d+)\s*,", body, re.MULTILINE)}


def _norm(name: str) -> str:
    return name.replace("_", "").lower()


def test_python_and_cpp_layer_kinds_agree():
    cpp = {_norm(k): v for k, v in _cpp_kinds().items()}
    py = {_norm(k.name): int(k) for k in LayerKind}
    assert cpp == py, f"csrc {cpp} vs fastdistill.engine.fused.LayerKind {py}"


def test_the_parser_reads_the_header():
    assert len(_cpp_kinds()) >= 5
