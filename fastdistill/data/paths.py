"""Where datasets and caches live by default."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir", "default_data_root"]


def default_data_root() -> Path | None:
    """The folder holding local dataset copies, or None if none is found.

    ``$FASTDISTILL_DATA_ROOT`` if set (returned even if it does not exist, so a typo gives a
    clear "not found" later instead of silently using another folder); otherwise the first
    existing of ``./shared/data``, ``../shared/data`` (relative to the working directory) and
    ``<repo root>/../shared/data`` (relative to this source file), which is where offline
    development machines keep their copies.
    """
    env = os.environ.get("FASTDISTILL_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    cwd = Path.cwd()
    repo_root = Path(__file__).resolve().parents[2]
    for candidate in (
        cwd / "shared" / "data",
        cwd.parent / "shared" / "data",
        repo_root.parent / "shared" / "data",
    ):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def default_cache_dir() -> Path:
    """``$FASTDISTILL_CACHE`` if set, else ``~/.cache/fastdistill`` (not created here)."""
    env = os.environ.get("FASTDISTILL_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fastdistill"
