"""What a run tells the person watching it: progress, ``OUT/metrics.jsonl`` and TensorBoard.

* :func:`make_progress`: a tqdm bar on a terminal; elsewhere (CI, ``nohup``, a log file) a
  plain line every ``every`` seconds and one at the end, never a carriage return.
* :class:`MetricsLog`: one JSON object per logged iteration, flushed as it is written, so a
  run in progress can be plotted (``fastdistill show RUN``) or tailed.

``fastdistill.figures.plot_metrics`` draws the curves of a ``metrics.jsonl``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

METRICS = "metrics.jsonl"
#: Keys every metrics line has; ``val_accuracy`` is added on the iterations that validate.
METRICS_KEYS = ("iteration", "time_s", "step_time_s", "outer_loss", "smoothed_loss", "lr",
                "inner_lrs")  # fmt: skip


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class LineProgress:
    """tqdm's ``update``/``set_postfix``/``close`` as plain lines on a non-terminal: one every
    ``every`` seconds (0: every update) and a last one at ``close``; no ``\\r``, flushed."""

    def __init__(
        self,
        total: int,
        initial: int = 0,
        *,
        desc: str = "distill",
        every: float = 30.0,
        file: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.n, self.desc, self.every = total, initial, desc, every
        self.file = file
        self.clock = clock
        self.start_n = initial
        self.start = self.last = clock()
        self.postfix: dict[str, Any] = {}
        self.closed = False

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, **kw: Any) -> None:
        self.postfix.update(ordered_dict or {}, **kw)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self._write(now)

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = now - self.start
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else float("nan")
        left = (self.total - self.n) / rate if done and rate > 0 else float("nan")
        pct = 100.0 * self.n / self.total if self.total else 100.0
        post = "".join(f"  {k} {v}" for k, v in self.postfix.items())
        speed = f"{rate:.2f} it/s" if rate >= 1 or not done else f"{1 / rate:.2f} s/it"
        return (
            f"{self.desc} {self.n}/{self.total} ({pct:.0f}%){post}  {speed}  "
            f"elapsed {_duration(elapsed)}  left {_duration(left)}"
        )

    def _write(self, now: float | None = None) -> None:
        f = self.file if self.file is not None else sys.stderr
        f.write(self.line(now) + "\n")
        f.flush()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write()


def make_progress(
    total: int,
    initial: int = 0,
    *,
    desc: str = "distill",
    every: float = 30.0,
    file: IO[str] | None = None,
) -> Any:
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a :class:`LineProgress`."""
    f = file if file is not None else sys.stderr
    isatty = getattr(f, "isatty", None)
    if callable(isatty) and isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit="it", file=f)
    return LineProgress(total, initial, desc=desc, every=every, file=file)


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class MetricsLog:
    """A ``Distiller.fit`` callback writing ``OUT/metrics.jsonl``: one JSON object per logged
    iteration (every ``every`` iterations, the last one, and every iteration that validated),
    with :data:`METRICS_KEYS` and ``val_accuracy`` when it validated.

    ``resume_from``: the iteration a resumed run continues from; lines after it (written after
    the checkpoint the run resumes from) are dropped and ``time_s`` continues. With
    ``tensorboard_dir`` the same scalars also go to TensorBoard (needs the package)."""

    def __init__(
        self,
        path: str | Path,
        *,
        every: int = 10,
        total: int | None = None,
        resume_from: int | None = None,
        tensorboard_dir: str | Path | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"metrics interval must be >= 1 iteration, got {every}")
        self.path = Path(path)
        self.every, self.total = every, total
        self.offset = 0.0
        kept: list[str] = []
        if resume_from is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if isinstance(row, dict) and row.get("iteration", math.inf) <= resume_from:
                    kept.append(json.dumps(row))
                    self.offset = float(row.get("time_s", self.offset))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("w", encoding="utf-8")
        for line in kept:
            self.file.write(line + "\n")
        self.file.flush()
        self.start = time.perf_counter()
        self.writer = None
        if tensorboard_dir is not None:
            self.writer = open_tensorboard(tensorboard_dir)

    def row(self, d: Any, stats: dict[str, float]) -> dict[str, Any] | None:
        """The line for this iteration, or None when it is not logged."""
        it = d.iteration
        last = d.history[-1] if d.history else {}
        validated = last.get("iteration") == it and "val_accuracy" in last
        final = self.total is not None and it >= self.total
        if not (validated or final or it % self.every == 0):
            return None
        row: dict[str, Any] = {
            "iteration": it,
            "time_s": round(self.offset + time.perf_counter() - self.start, 4),
            "step_time_s": round(d.wall_time, 4),
            "outer_loss": stats["outer_loss"] if math.isfinite(stats["outer_loss"]) else None,
            "smoothed_loss": d.smoothed_loss,
            "lr": stats["lr"],
            "inner_lrs": [float(v) for v in d.distilled.lrs.reshape(-1).tolist()],
        }
        if validated:
            row["val_accuracy"] = last["val_accuracy"]
        return row

    def __call__(self, d: Any, stats: dict[str, float]) -> None:
        row = self.row(d, stats)
        if row is None:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.writer is not None:
            it = row["iteration"]
            for key in ("outer_loss", "smoothed_loss", "lr", "val_accuracy"):
                if row.get(key) is not None:
                    self.writer.add_scalar(key, row[key], it)
            for t, v in enumerate(row["inner_lrs"]):
                self.writer.add_scalar(f"inner_lr/{t}", v, it)
            self.writer.flush()

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def open_tensorboard(log_dir: str | Path) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter``; a one-line ``ValueError`` when the
    tensorboard package is not installed."""
    if not tensorboard_available():
        raise ValueError(
            "--tensorboard needs the tensorboard package (pip install tensorboard); "
            "metrics.jsonl is written either way (plot it with `fastdistill show RUN`)"
        )
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (a run folder or the file); a last line cut short by a
    kill is skipped, any other bad line is a ``ValueError`` naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS} at {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines):
                break
            raise ValueError(f"{path}:{i}: not JSON ({err})") from None
        if not isinstance(row, dict) or "iteration" not in row:
            raise ValueError(f"{path}:{i}: not a metrics row (no 'iteration')")
        rows.append(row)
    return rows
