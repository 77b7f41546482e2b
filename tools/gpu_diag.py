"""Diagnose how the built extension raises input errors on this machine (each case in its own
process, so a crash is recorded rather than fatal), and record the C++ ABI facts behind it.

    python3 tools/gpu_diag.py > diag.txt
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

CASES = {
    "literal-message": "k.adjoint_update(v, v, v, torch.zeros(2, device=d))",
    "formatted-shape": "k.adjoint_update(v, torch.zeros(3, 2, device=d), v, raw)",
    "formatted-dtype": "k.adjoint_update(v.int(), v.int(), v.int(), raw.int())",
    "inner-update-shape": "k.inner_update(v, torch.zeros(3, 2, device=d), raw)",
    "nearest-embedding-dim": "k.nearest_embedding(v, torch.zeros(4, 5, device=d), 1, 'euclidean', None)",
}


def run_case(code: str, device: str) -> str:
    prog = textwrap.dedent(f"""
        import faulthandler, torch
        faulthandler.enable()
        from fastdistill import _extension
        assert _extension.load(), _extension.backend_info()
        k = torch.ops.fastdistill
        d = {device!r}
        v = torch.zeros(2, 3, device=d)
        raw = torch.tensor(0.1, device=d)
        try:
            {code}
            print("NO ERROR")
        except Exception as e:
            print("raised", type(e).__name__, str(e).splitlines()[0][:160])
        """)
    p = subprocess.run(
        [sys.executable, "-c", prog], capture_output=True, text=True, timeout=120, check=False
    )
    tail = (p.stdout + p.stderr).strip().splitlines()[-6:]
    return f"rc={p.returncode} :: " + " | ".join(tail)


def sh(cmd: str) -> str:
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, check=False)
    return (p.stdout + p.stderr).strip()


def main() -> None:
    import fastdistill._C as C
    import torch

    print("torch", torch.__version__, "cxx11 abi", torch._C._GLIBCXX_USE_CXX11_ABI)
    print(sh("g++ --version | head -1"))
    print(
        "compiler default abi:",
        sh("printf '#include <string>\\n' | g++ -x c++ -dM -E - | grep _GLIBCXX_USE_CXX11_ABI"),
    )
    so = C.__file__
    print("extension", so)
    undef = sh(
        f"nm -D --undefined-only {so} | c++filt | grep -i 'c10::' | grep -i "
        "'error\\|torchcheck\\|str' | head -20"
    )
    print("undefined c10 error symbols:\n" + undef)
    print(
        "__cxx11 strings in c10 refs:",
        sh(f"nm -D --undefined-only {so} | grep c10 | grep -c __cxx11"),
    )
    print(
        "old-ABI strings (Ss) in c10 refs:",
        sh(f"nm -D --undefined-only {so} | grep c10 | grep -c 'Ss\\|SsE'"),
    )
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for name, code in CASES.items():
            print(f"[{device}] {name}: {run_case(code, device)}")


if __name__ == "__main__":
    main()
