"""The layering of docs/ARCHITECTURE.md, checked on the source: every import points down (or
within a layer), there is no import circle, and only ``fastdistill.ops`` touches
``torch.ops.fastdistill``. Function-local imports count: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "fastdistill"

# Top-level part of the package -> layer (higher imports lower, never the other way round).
LAYERS = {
    "ops": 0,
    "utils": 0,
    "engine": 1,
    "models": 2,
    "data": 2,
    "distributed": 2,
    "config": 3,
    "distilled": 3,
    "evaluate": 4,
    "baselines": 4,
    "full_data": 4,
    "decode": 4,
    "prototypes": 4,
    "runlog": 4,
    "preset_timings": 3,
    "distiller": 5,
    "compat": 5,
    "export": 5,
    "dataset": 5,
    "estimate": 5,
    "controls": 5,
    "cli": 6,
    "reproduce": 6,
    "figures": 6,
    "bench": 6,
    "__main__": 6,
    "": 7,  # fastdistill/__init__.py: the public API re-exports everything
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The fastdistill modules ``name`` imports (resolved to modules that exist)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                keep = len(parts) - node.level + (1 if is_pkg else 0)
                base = ".".join(parts[:keep] + ([base] if base else []))
            # `from X import a`: the submodule X.a where it is one, else X itself
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _part(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer():
    missing = sorted({_part(m) for m in MODULES} - set(LAYERS))
    assert not missing, f"add these parts of the package to LAYERS (and ARCHITECTURE.md): {missing}"


def test_imports_point_down():
    bad = [
        f"{m} (layer {LAYERS[_part(m)]}) imports {t} (layer {LAYERS[_part(t)]})"
        for m, targets in GRAPH.items()
        for t in sorted(targets)
        if LAYERS[_part(t)] > LAYERS[_part(m)]
    ]
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(bad)


def _is_family(a: str, b: str) -> bool:
    """A package importing its own submodules (re-exports) or a submodule its package."""
    return a.startswith(b + ".") or b.startswith(a + ".")


def test_no_import_circle():
    color: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(u: str) -> None:
        color[u] = 1
        stack.append(u)
        for v in sorted(GRAPH[u]):
            if _is_family(u, v):
                continue
            if color.get(v) == 1:
                cycles.append(stack[stack.index(v) :] + [v])
            elif v not in color:
                visit(v)
        stack.pop()
        color[u] = 2

    for m in sorted(GRAPH):
        if m not in color:
            visit(m)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", sorted(m for m in MODULES if _part(m) != "ops"))
def test_only_ops_calls_the_library(name):
    src = MODULES[name].read_text(encoding="utf-8")
    assert "torch.ops.fastdistill" not in src, f"{name}: call fastdistill.ops instead"


def test_the_checker_sees_violations(tmp_path):
    """The import resolver finds relative, absolute and function-local imports."""
    path = tmp_path / "mod.py"
    path.write_text(
        "from fastdistill.engine import functional\n"
        "def f():\n    from fastdistill import config\n"
        "from ..ops import _backend\n"
    )
    found = _imports("fastdistill.engine.mod", path)
    assert {"fastdistill.engine.functional", "fastdistill.config"} <= found
    assert "fastdistill.ops._backend" in found
