"""Command line: ``fastdistill presets | distill | evaluate | reproduce | show | info``.

Every user mistake ends in one line on stderr, ``fastdistill: error: ...`` naming the value
and the fix, with exit code 2; ``--debug`` (anywhere on the line) also prints the traceback.
SIGINT/SIGTERM stop a distillation at the end of the iteration in progress, write the
checkpoint and exit with 130/143.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

from fastdistill.config import PRESETS


def _cmd_presets(args: argparse.Namespace) -> int:
    """Each preset: its size (T, distilled samples, nets per iteration, iterations), the
    measured seconds per iteration on the reference CPU and the projected run time."""
    from fastdistill.estimate import format_duration, preset_sizes
    from fastdistill.preset_timings import DATE, MACHINE, TIMINGS

    rows = []
    for name, p in PRESETS.items():
        size = preset_sizes(p.config)
        timing = TIMINGS.get(name)
        # the preset's own count (a timing file measured before a schedule change still
        # gives the per-iteration cost); the timing's count where data sizes are unknown
        its = size["iterations"] or (timing["iterations"] if timing else None)
        per_it = f"{timing['s_per_iteration']:.3g}" if timing else "-"
        total = format_duration(timing["s_per_iteration"] * its) if timing else "-"
        rows.append(
            (
                name,
                str(size["T"]),
                str(size["samples"] or "?"),
                str(size["nets_per_iteration"]),
                str(its or "?"),
                per_it,
                total,
                p.description,
                p.paper_accuracy,
            )
        )
    if args.json:
        keys = (
            "name",
            "T",
            "samples",
            "nets_per_iteration",
            "iterations",
            "s_per_iteration",
            "projected",
            "description",
            "paper_accuracy",
        )
        print(json.dumps([dict(zip(keys, r)) for r in rows], indent=1))
        return 0
    head = ("preset", "T", "samples", "nets/it", "iterations", "s/it", "projected")
    widths = [max(len(r[i]) for r in [*rows, head]) for i in range(len(head))]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
        paper = f" [paper: {r[8]}]" if r[8] else ""
        print(f"    {r[7]}{paper}")
    print(
        f"s/it: measured {DATE} on {MACHINE}; `fastdistill distill --preset NAME --estimate` "
        "times it on this machine"
    )
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from fastdistill.ops import backend_info

    print(json.dumps(backend_info(), indent=2, default=str))
    return 0


class UsageError(ValueError):
    """A bad command line (argparse's complaint), reported in one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


_positive = _int_at_least(1)
_non_negative = _int_at_least(0)


def _resume_mode(text: str) -> str:
    if text not in ("auto", "always"):
        raise argparse.ArgumentTypeError(
            f"expected nothing or 'auto', got {text!r} (--resume: a checkpoint must exist; "
            "--resume auto: resume when one exists)"
        )
    return text


def _device(name: str | None) -> torch.device:
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"--device {name!r} is not a device; use cpu, cuda, cuda:N or auto"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: no CUDA GPU is available (torch.cuda.is_available() is "
                "False); use --device cpu (or auto)"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"--device {name}: this machine has {count} GPU(s) (cuda:0..cuda:{count - 1})"
            )
    elif device.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"--device {name}: unsupported device type; use cpu, cuda or auto")
    return device


def _check_out(out: Path) -> None:
    """``--out`` must be (or be creatable as) a writable folder; checked before any work and
    without creating anything, so a bad command line leaves no output behind."""
    if out.exists() and not out.is_dir():
        raise ValueError(
            f"--out {out} is a file, not a folder; pass a folder path (created if missing)"
        )
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"--out {out}: {probe} is a file, not a folder; pass another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {probe} is not writable; choose a writable folder")


def _init_torchrun(device: torch.device) -> torch.device:
    """Under ``torchrun`` (WORLD_SIZE > 1): join the process group (NCCL on GPUs, gloo on CPUs)
    and give each rank its own GPU. Returns the device this rank uses.

    After a restart (``--max-restarts``) the workers meet under a key prefix of their own
    attempt: torchrun's store keeps the previous attempt's addresses, and gloo reading a dead
    rank's address hangs or fails to connect. ``FASTDISTILL_DIST_TIMEOUT`` (seconds, default
    1800) bounds the wait for the other ranks."""
    from datetime import timedelta

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(seconds=float(os.environ.get("FASTDISTILL_DIST_TIMEOUT", "1800")))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    if attempt is None or not agent_store:
        dist.init_process_group(backend, timeout=timeout)
        return device
    rank = int(os.environ["RANK"])
    base = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
        timeout=timeout,
    )  # fmt: skip
    store = dist.PrefixStore(f"fastdistill/attempt-{attempt}", base)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    return device


#: ``distill`` options that are shortcuts for configuration fields.
_OPTION_FIELDS = (
    "iterations",
    "seed",
    "engine",
    "eval_nets",
    "full_data_epochs",
    "full_data_lr",
    "controls",
    "stop_at",
    "dtype",
)


def _run_config(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The run's configuration, lowest to highest precedence: the preset (``--preset``, else
    the config file's ``preset`` key), the ``--config`` file, the shortcut options, ``--set``."""
    from fastdistill.config import resolve_config

    if args.preset is None and args.config is None:
        raise ValueError(
            "distill needs --preset NAME (see `fastdistill presets`) or --config FILE "
            "(e.g. a run folder's config.toml)"
        )
    options = {k: getattr(args, k) for k in _OPTION_FIELDS if getattr(args, k) is not None}
    # the shortcut options are typed by argparse; --set values are checked by DistillConfig
    return resolve_config(args.preset, args.config, {**options, **_parse_overrides(args.set)})


def _estimate(args: argparse.Namespace, config: Any, device: torch.device) -> int:
    """``distill --estimate N``: time N iterations of a throwaway run, print the projection."""
    from fastdistill.distiller import Distiller
    from fastdistill.estimate import estimate_run

    start = time.perf_counter()
    distiller = Distiller(config, device=device, data_root=args.data_root, download=args.download)
    load = time.perf_counter() - start
    est = estimate_run(distiller, iterations=args.estimate, warmup=2, load_s=load)
    print(
        f"estimate for {args.preset or args.config} on {device} "
        f"({torch.get_num_threads()} threads, {_backend_name()} backend):"
    )
    for line in est.lines():
        print(line)
    if args.out is not None:
        print(f"nothing was written; run again without --estimate to distill into {args.out}")
    return 0


def _backend_name() -> str:
    from fastdistill.ops import backend_info

    return "kernels" if backend_info()["extension_loaded"] else "reference"


def _resume(args: argparse.Namespace, distiller: Any, ckpt: Path, main_rank: bool) -> None:
    loaded = distiller.resume(
        ckpt,
        allow_device_change=args.allow_device_change,
        report=lambda msg: print(f"fastdistill: warning: {msg}", file=sys.stderr),
    )
    if loaded is None and args.resume == "always":
        raise ValueError(
            f"--resume: no checkpoint in {ckpt.parent} ({ckpt.name}); run without --resume to "
            "start, or pass --resume auto to resume only when one exists"
        )
    if loaded is not None and main_rank:
        print(f"resumed from {loaded} at iteration {distiller.iteration}")


def _iteration_printer(every: int):
    """The ``--log-every`` callback: one plain line every ``every`` iterations."""

    def report_line(d: Any, stats: dict[str, float]) -> None:
        if every and d.iteration % every == 0:
            last = d.history[-1] if d.history else {}
            val = (
                f"  val {100 * last['val_accuracy']:.1f}%"
                if last.get("iteration") == d.iteration and "val_accuracy" in last
                else ""
            )
            print(
                f"iteration {d.iteration}/{d.total_iterations}  loss {stats['outer_loss']:.4f}  "
                f"lr {stats['lr']:.3g}{val}  {d.wall_time:.0f}s",
                flush=True,
            )

    return report_line


def _cmd_distill(args: argparse.Namespace) -> int:
    from fastdistill.config import write_config
    from fastdistill.distilled import remove_orphan_temps
    from fastdistill.distiller import Distiller
    from fastdistill.distributed import is_main_rank
    from fastdistill.runlog import METRICS, MetricsLog, open_tensorboard

    config, preset_name = _run_config(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.estimate:
        if args.out is not None:
            _check_out(Path(args.out))
        return _estimate(args, config, _device(args.device))
    if args.out is None:
        raise ValueError("distill needs --out FOLDER (or --estimate N to only time the run)")
    out = Path(args.out)
    _check_out(out)
    if args.tensorboard:
        open_tensorboard(out / "tensorboard").close()  # fails early without the package
    device = _init_torchrun(_device(args.device))
    main_rank = is_main_rank()

    start = time.perf_counter()
    distiller = Distiller(config, device=device, data_root=args.data_root, download=args.download)
    load_time = time.perf_counter() - start
    ckpt = out / "checkpoint.safetensors"
    if main_rank:
        remove_orphan_temps(out, [ckpt.name, "distilled.safetensors"])
    if args.resume:
        _resume(args, distiller, ckpt, main_rank)
    metrics = None
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        write_config(config, out / "config.toml", comment=_config_comment(preset_name))
        metrics = MetricsLog(
            out / METRICS,
            every=args.metrics_every,
            total=distiller.total_iterations,
            resume_from=distiller.iteration if args.resume else None,
            tensorboard_dir=out / "tensorboard" if args.tensorboard else None,
        )
        print(
            f"distilling {preset_name or args.config}: {distiller.total_iterations} iterations "
            f"on {device}, model {config.model} ({distiller.model.num_params} parameters), "
            f"{distiller.distilled.num_samples} distilled samples, T={config.total_steps}"
        )
    printer = _iteration_printer(args.log_every)

    def callback(d: Any, stats: dict[str, float]) -> None:
        printer(d, stats)
        metrics(d, stats)

    try:
        distiller.fit(
            progress=not args.quiet and main_rank,
            checkpoint_path=ckpt,
            checkpoint_every=args.checkpoint_every,
            callback=callback if main_rank else None,
            progress_every=args.progress_every,
        )
    finally:
        if metrics is not None:
            metrics.close()
    evaluations = _evaluate(distiller)  # every rank: they share the nets
    if main_rank:
        _finish(args, distiller, out, preset_name, load_time, evaluations)
    return 0


def _evaluate(distiller: Any) -> dict[str, Any]:
    """Test accuracy of the set and of its controls, timed; collective under torchrun."""
    from fastdistill.controls import control_accuracies

    t0 = time.perf_counter()
    acc = distiller.evaluate()
    out: dict[str, Any] = {"accuracy": acc, "time": time.perf_counter() - t0, "controls": None}
    if distiller.config.controls:
        t0 = time.perf_counter()
        out["controls"] = control_accuracies(distiller)
        out["controls_time"] = time.perf_counter() - t0
    return out


def _config_comment(preset_name: str | None) -> str:
    return (
        "The resolved configuration of a fastdistill run (preset < --config < options < "
        "--set).\n`fastdistill distill --config THIS_FILE --out DIR` runs it again."
    )


def _finish(
    args: argparse.Namespace,
    distiller: Any,
    out: Path,
    preset_name: str | None,
    load_time: float,
    evaluations: dict[str, Any],
) -> None:
    """Save the set, decode text, report the evaluations, train the full-data reference,
    write report.json."""
    from fastdistill.evaluate import distillation_ratio
    from fastdistill.full_data import options_from_config, train_full_data
    from fastdistill.models import build_model_for
    from fastdistill.ops import backend_info

    config, device = distiller.config, distiller.device
    distiller.distilled.save(out / "distilled.safetensors")
    decoded = None
    if distiller.data.describe().get("kind") == "text":
        from fastdistill.decode import decode_distilled, write_decoded

        t0 = time.perf_counter()
        decoded = write_decoded(decode_distilled(distiller.distilled, distiller.data), out)[0]
        print(f"decoded nearest sentences in {time.perf_counter() - t0:.2f}s -> {decoded}")

    acc, eval_time = evaluations["accuracy"], evaluations["time"]
    if distiller.reached is not None:
        r = distiller.reached
        print(
            f"stopped at iteration {r['iteration']} ({r['wall_time']:.1f} s): validation "
            f"accuracy {100 * r['val_accuracy']:.2f}% >= stop_at {100 * config.stop_at:.2f}%"
        )
    print(f"test accuracy ({config.init} init): {acc}")
    controls = evaluations["controls"]
    if controls is not None:
        hard, real = controls["hard_labels"], controls["random_real"]
        if hard is not None:
            print(f"  control, same set with hard labels: {hard}")
        print(f"  control, random real examples of the same size (lr {real.lr}): {real}")
    preset = PRESETS.get(preset_name) if preset_name else None
    report: dict[str, Any] = {
        "preset": preset_name,
        "test_accuracy": acc.to_dict(),
        "paper_accuracy": preset.paper_accuracy if preset else None,
        "config": config.to_dict(),
        "iterations": distiller.iteration,
        "distill_wall_time_s": distiller.wall_time,
        "seconds_per_iteration": distiller.wall_time / max(1, distiller.iteration),
        "data_load_time_s": load_time,
        "evaluation_time_s": eval_time,
        "device": str(device),
        "torch": torch.__version__,
        "backend": backend_info(),
        "learned_lrs": distiller.distilled.lrs.tolist(),
        "history": distiller.history,
        "best": distiller.best,
        "reached": distiller.reached,
        "skipped_iterations": distiller.skipped,
        "dataset": distiller.data.describe(),
    }
    if controls is not None:
        report["controls"] = {k: v.to_dict() for k, v in controls.items() if v is not None}
        report["controls_time_s"] = evaluations["controls_time"]
    if decoded is not None:
        report["decoded_sentences"] = str(decoded)
    if config.full_data_epochs > 0:
        module = build_model_for(config.model, distiller.data, **config.model_kwargs)
        full = train_full_data(
            module.to(device, distiller.dtype),
            distiller.data,
            options_from_config(config),
            seed=config.seed,
            scheme=config.init_scheme,
        )
        ratio = distillation_ratio(acc.mean, full.test_accuracy)
        report.update(
            full_data_accuracy=full.test_accuracy,
            distillation_ratio=ratio,
            full_data=full.to_dict(),
        )
        kept = f"epoch {full.best_epoch} of {full.epochs_run}"
        print(f"full-data accuracy: {100 * full.test_accuracy:.2f}% ({kept})  ->  r = {ratio:.1f}")
        report["warnings"] = full.warnings(acc.mean)
        for line in report["warnings"]:
            print(line, file=sys.stderr)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(
        f"wrote {out / 'distilled.safetensors'}, {out / 'report.json'}, config.toml, metrics.jsonl"
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from fastdistill.data import reload_dataset
    from fastdistill.distilled import DistilledSet
    from fastdistill.engine.functional import FlatModel
    from fastdistill.evaluate import evaluate_distilled
    from fastdistill.models import build_model_for

    device = _device(args.device)
    path = Path(args.path)
    if path.is_dir():
        path = path / "distilled.safetensors"
    d = DistilledSet.load(path, device)
    meta = d.meta
    data = reload_dataset(meta["dataset"], args.data_root).to(device)
    model_name = args.model or meta["model"]["name"]
    kwargs = meta["model"]["kwargs"] if args.model is None else {}
    module = build_model_for(model_name, data, **kwargs).to(device, d.data.dtype)
    # another architecture has no fixed init of its own: evaluate it over random inits
    init = args.init or (meta["init"]["kind"] if args.model is None else "random")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    acc = evaluate_distilled(
        d,
        FlatModel(module),
        data.test_x,
        data.test_y,
        init=init,
        n_nets=args.nets,
        generator=gen,
        scheme=meta["init"]["scheme"],
        transform=data.model_inputs,
    )
    print(json.dumps({"model": model_name, "init": init, "test_accuracy": acc.to_dict()}))
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from fastdistill.reproduce import TABLES, RunOptions, run_table

    if args.list or args.table is None:
        width = max(len(n) for n in TABLES)
        for name, spec in TABLES.items():
            print(f"{name:<{width}}  {spec.title}")
            print(f"{'':<{width}}  cells: {', '.join(c.key for c in spec.cells)}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    options = RunOptions(
        device=_device(args.device),
        data_root=args.data_root,
        download=args.download,
        overrides=_parse_overrides(args.set),
        eval_nets=args.eval_nets,
        estimate=args.estimate or 0,
        progress=not args.quiet,
    )
    cells = args.cells.split(",") if args.cells else None
    out = Path(args.out or Path("runs") / args.table)
    run_table(args.table, out, cells=cells, options=options)
    print((out / "table.md").read_text())
    print(f"wrote {out / 'table.md'} and {out / 'table.json'}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from fastdistill.figures import show_run

    for path in show_run(args.run_dir, args.out):
        print(path)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from fastdistill.export import export_distilled

    run = Path(args.run)
    if not run.exists():
        raise ValueError(
            f"{run} does not exist; pass a `fastdistill distill` output folder or a "
            ".safetensors file"
        )
    out = Path(args.out)
    _check_out(out)
    for path in export_distilled(run, args.format, out, data_root=args.data_root):
        print(f"wrote {path}")
    return 0


def _parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> configuration overrides (values parsed as JSON when they can)."""
    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastdistill", description=__doc__)
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (anywhere on the line)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("presets", help="list the named configurations, their size and time")
    pr.add_argument("--json", action="store_true", help="print the table as JSON")
    pr.set_defaults(fn=_cmd_presets)
    sub.add_parser(
        "info", help="which backend (kernels or reference) is in use, and why"
    ).set_defaults(fn=_cmd_info)

    d = sub.add_parser("distill", help="distill a dataset with a preset or a config file")
    d.add_argument("--preset", help="a named configuration (`fastdistill presets`)")
    d.add_argument(
        "--config",
        metavar="FILE",
        help="a TOML (or YAML, JSON) file of configuration fields, e.g. a run's config.toml; "
        "merged as preset < file < options < --set",
    )
    d.add_argument("--out", help="output folder (required unless --estimate)")
    d.add_argument(
        "--estimate",
        type=_positive,
        nargs="?",
        const=5,
        metavar="N",
        help="time N iterations (default 5) after a warm-up and print the projected wall "
        "time and peak memory of the whole run; writes nothing",
    )
    d.add_argument(
        "--iterations", type=_non_negative, help="outer iterations (default: the preset's)"
    )
    d.add_argument("--seed", type=_non_negative)
    d.add_argument(
        "--stop-at",
        type=float,
        metavar="ACC",
        help="stop once validation accuracy reaches ACC (0-1; needs --set validation=0.1 or a "
        "preset with a validation split)",
    )
    d.add_argument("--engine", choices=["adjoint", "unroll"])
    d.add_argument("--eval-nets", type=_positive, help="random-init nets to evaluate (default 200)")
    d.add_argument(
        "--full-data-epochs",
        type=_non_negative,
        help="also train on all real data for up to this many epochs, for the ratio r_M "
        "(validation split, early stopping; --set full_data_batch_size=, full_data_patience=...)",
    )
    d.add_argument("--full-data-lr", type=float, help="AdamW step of the full-data reference")
    d.add_argument(
        "--no-controls",
        dest="controls",
        action="store_const",
        const=False,
        help="skip the controls (same set with hard labels; random real set of its size)",
    )
    d.add_argument("--dtype", choices=["float32", "float64"])
    d.add_argument("--data-root", help="folder laid out like ../shared/data (default: found)")
    d.add_argument("--download", action="store_true", help="allow dataset downloads")
    d.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    d.add_argument("--threads", type=_positive, help="CPU threads for torch")
    d.add_argument(
        "--resume",
        nargs="?",
        const="always",
        type=_resume_mode,
        metavar="auto",
        help="continue from OUT/checkpoint.safetensors (an error when there is none); "
        "`--resume auto`: resume if a checkpoint exists, else start",
    )
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.add_argument(
        "--progress-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="off a terminal (a log file, CI): one plain progress line every SECONDS (30)",
    )
    d.add_argument(
        "--metrics-every",
        type=_positive,
        default=10,
        metavar="N",
        help="write a line to OUT/metrics.jsonl every N iterations (and at each validation)",
    )
    d.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log the metrics to OUT/tensorboard (needs the tensorboard package)",
    )
    d.add_argument(
        "--log-every", type=_non_negative, default=0, help="print a line every N iterations"
    )
    d.add_argument(
        "--allow-device-change",
        action="store_true",
        help="with --resume: continue a checkpoint written on another device type (CPU <-> "
        "CUDA); random-init draws are re-seeded, so the resume is not exact",
    )
    d.add_argument(
        "--checkpoint-every",
        type=_positive,
        default=500,
        help="write OUT/checkpoint.safetensors (atomically) every N iterations (default 500)",
    )
    d.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any configuration field (JSON value), e.g. decay_epochs=100",
    )
    d.set_defaults(fn=_cmd_distill)

    e = sub.add_parser("evaluate", help="evaluate a saved distilled set")
    e.add_argument("path", help="a run folder or a distilled.safetensors file")
    e.add_argument("--model", help="another architecture (cross-architecture evaluation)")
    e.add_argument("--init", choices=["fixed", "random"])
    e.add_argument("--nets", type=_positive, default=200)
    e.add_argument("--seed", type=_non_negative, default=0)
    e.add_argument("--data-root")
    e.add_argument("--device", default="auto")
    e.set_defaults(fn=_cmd_evaluate)
    r = sub.add_parser(
        "reproduce",
        help="reproduce a table of the paper (resumable, cell by cell) beside its numbers",
    )
    r.add_argument("table", nargs="?", help="e.g. table2-mnist, table3-trec6 (--list)")
    r.add_argument("--list", action="store_true", help="list the tables and their cells")
    r.add_argument("--out", help="output folder (default runs/TABLE)")
    r.add_argument("--cells", help="comma-separated cell keys to run (default: all)")
    r.add_argument(
        "--estimate",
        type=_positive,
        metavar="N",
        help="time N iterations of each distillation cell and record the projected wall time",
    )
    r.add_argument(
        "--eval-nets", type=_positive, help="random-init nets per evaluation (default 200)"
    )
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override every cell")
    r.add_argument("--data-root")
    r.add_argument("--download", action="store_true")
    r.add_argument("--device", default="auto")
    r.add_argument("--threads", type=_positive)
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(fn=_cmd_reproduce)
    s = sub.add_parser("show", help="render the figures of a saved run (PNG and PDF)")
    s.add_argument("run_dir", help="a `fastdistill distill` output folder")
    s.add_argument("--out", help="output folder (default RUN_DIR/figures)")
    s.set_defaults(fn=_cmd_show)
    p = sub.add_parser(
        "export", help="write a distilled set as PNG folders (ImageFolder), .npz or decoded text"
    )
    p.add_argument("run", help="a `fastdistill distill` output folder or a .safetensors file")
    p.add_argument("--format", required=True, choices=["imagefolder", "npz", "text"])
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--data-root", help="text: folder laid out like ../shared/data")
    p.set_defaults(fn=_cmd_export)
    b = sub.add_parser(
        "bench", help="seconds per outer iteration on the benchmark shapes A-F (JSON with --json)"
    )
    b.add_argument("shapes", nargs="*", default=["A", "B", "C"], help="shape names (A-F)")
    b.add_argument("--engine", default="adjoint", choices=["adjoint", "unroll"])
    b.add_argument("--iters", type=int, default=15, help="timed iterations per shape")
    b.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    b.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    b.add_argument("--device", default="cpu")
    b.add_argument("--real-batch", type=int, default=1024)
    b.add_argument("--json", help="write the results here")
    b.set_defaults(fn=_cmd_bench)
    return parser


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from fastdistill.bench import SHAPES, bench_shape, write_json

    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        raise ValueError(f"unknown bench shape(s) {unknown}; choose from {', '.join(SHAPES)}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    results = []
    for name in args.shapes:
        r = bench_shape(name, args.engine, args.iters, args.warmup, args.device, args.real_batch)
        print(r.line(), flush=True)
        results.append(r)
    if args.json:
        write_json(results, args.json)
        print(f"wrote {args.json}")
    return 0


def _interrupt_on_sigterm(signum: int, frame: Any) -> None:
    from fastdistill.distiller import Interrupted

    raise Interrupted(signum)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text


def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )


_PEER_LOST = ("connection reset by peer", "connection closed by peer", "broken pipe",
              "connection refused", "timed out", "nccl")  # fmt: skip


def _lost_rank_line(err: BaseException) -> str | None:
    """Under torchrun, a collective that failed because another rank died or hung."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not isinstance(err, RuntimeError):
        return None
    text = " ".join(str(err).split())
    dist_error = getattr(torch.distributed, "DistError", ())
    if not (isinstance(err, dist_error) or "gloo" in text.lower() or "nccl" in text.lower()):
        return None
    cause = next((p for p in _PEER_LOST if p in text.lower()), None)
    detail = cause or (text[:120] + ("..." if len(text) > 120 else ""))
    rank = os.environ.get("RANK", "?")
    return (
        f"error: rank {rank} of {world} lost another rank ({detail}); the run stopped at its "
        "last checkpoint, and with torchrun --max-restarts=N and --resume auto it resumes there "
        "(the failing rank's log says why it stopped)"
    )


def _error_line(err: BaseException) -> tuple[str, int]:
    """The one line (without the ``fastdistill:`` prefix) and exit code for an exception."""
    from fastdistill.distiller import Interrupted

    if isinstance(err, Interrupted):
        return str(err), err.exit_code
    if isinstance(err, KeyboardInterrupt):
        return "interrupted", 130
    lost = _lost_rank_line(err)
    if lost is not None:
        return lost, 1
    if _is_out_of_memory(err):
        detail = _one_line(err)
        if len(detail) > 160:
            detail = detail[:157] + "..."
        hint = (
            "lower real_batch_size (--set real_batch_size=256), compute the real batch in "
            "chunks (--set outer_chunk=128), store fewer inner steps (--set "
            "checkpoint_every=4), or use a device with more memory"
        )
        return f"error: out of memory ({type(err).__name__}: {detail}); {hint}", 2
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):
        where = f" ({err.filename})" if err.filename and str(err.filename) not in str(err) else ""
        return f"error: {_one_line(err)}{where}", 2
    if isinstance(err, (ValueError, FileNotFoundError)):
        return f"error: {_one_line(err)}", 2
    from fastdistill.distiller import NonFiniteLossError

    if isinstance(err, NonFiniteLossError):
        return f"error: {_one_line(err)}", 2
    hint = "rerun with --debug for the traceback, and please report it"
    return f"internal error: {type(err).__name__}: {_one_line(err)} ({hint})", 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"fastdistill: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("FASTDISTILL_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    previous = None
    if threading.current_thread() is threading.main_thread():
        # A job scheduler's or `timeout`'s SIGTERM stops a run like Ctrl-C does; inside the
        # distillation loop both finish the iteration and write the checkpoint (distiller.py).
        previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    finished = False
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            args = build_parser().parse_args(argv)
            code = args.fn(args)
            finished = True
            return code
    except SystemExit:
        raise
    except BrokenPipeError:  # `fastdistill presets | head`: the reader left, nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except BaseException as err:  # noqa: BLE001 (every failure ends in one line)
        if debug:
            traceback.print_exc()
        line, code = _error_line(err)
        print(f"fastdistill: {line}", file=sys.stderr)
        return code
    finally:
        _leave_process_group(finished)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _leave_process_group(finished: bool) -> None:
    """Leave the torchrun process group before the interpreter exits. A rank that exits with
    its group alive tears gloo down during finalisation, which can abort it ("terminate called
    without an active exception") while a peer is still finishing. After a finished command
    the ranks first meet, so none leaves while another still talks to it; after a failure a
    peer may be gone, so the group is only destroyed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    # a lost peer: the command's own error line has already said so
    with contextlib.suppress(Exception):
        if finished:
            from fastdistill.distributed import leave_together

            leave_together()
        else:
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
