"""Input-check messages in the C++ sources are built from strings only.

On the H200 machine (torch 2.11, Python 3.12, g++ 13.3) a TORCH_CHECK message that streamed an
integer or a shape (``<< int64_t``, ``<< t.sizes()``) segfaulted the process, on the CPU and CUDA
paths alike (RESULTS.md, GPU checks). It cannot be reproduced here, so this scan keeps the rule:
every message argument is a string literal, a known string-valued name, ``shape_str(...)``,
``std::to_string(...)``, ``std::string(...)``, or a dtype/device (those stream safely).
"""

from __future__ import annotations

import re
from pathlib import Path

CSRC = Path(__file__).resolve().parents[2] / "csrc"
SAFE = re.compile(
    r"""^(?:
        "(?:[^"\\]|\\.)*"(?:\s*"(?:[^"\\]|\\.)*")*      # string literals (adjacent ones too)
      | op | name | ref_name                           # const char* names
      | shape_str\(.*\) | std::to_string\(.*\) | std::string\(.*\)
      | c10::DeviceTypeName\(.*\)
      | [\w.\->]*scalar_type\(\) | [\w.\->]*device\(\)  # dtype / device
      | t                                              # to_dtype's ScalarType argument
    )$""",
    re.DOTALL | re.VERBOSE,
)


def _calls(text: str):
    """(line, [message args]) of every TORCH_CHECK* call."""
    for m in re.finditer(r"\bTORCH_CHECK\w*\(", text):
        i = j = m.end()
        depth, in_str, args, start = 1, False, [], i
        while depth:
            c = text[j]
            if in_str:
                if c == "\\":
                    j += 1
                elif c == '"':
                    in_str = False
            elif c == '"':
                in_str = True
            elif c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
            elif c == "," and depth == 1:
                args.append(text[start:j].strip())
                start = j + 1
            j += 1
        args.append(text[start : j - 1].strip())
        yield text[: m.start()].count("\n") + 1, args[1:]  # args[0] is the condition


def test_scanner_flags_integer_arguments():
    bad = 'TORCH_CHECK_VALUE(x == 1, op, ": got ", x.size(0), " and ", t.sizes());'
    ((_, args),) = _calls(bad)
    assert [a for a in args if not SAFE.match(a)] == ["x.size(0)", "t.sizes()"]


def test_check_messages_stream_only_strings():
    files = [p for p in CSRC.rglob("*") if p.suffix in {".h", ".cpp", ".cu", ".cuh"}]
    assert files
    offenders = []
    for path in files:
        for line, args in _calls(path.read_text()):
            offenders += [
                f"{path.relative_to(CSRC)}:{line}: {a}" for a in args if not SAFE.match(a)
            ]
    assert not offenders, "wrap in std::to_string / shape_str:\n" + "\n".join(offenders)
