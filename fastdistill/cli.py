"""Command line: ``fastdistill presets | distill | evaluate | reproduce | show | info``."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from fastdistill.config import PRESETS, get_preset


def _cmd_presets(args: argparse.Namespace) -> int:
    width = max(len(n) for n in PRESETS)
    for name, p in PRESETS.items():
        paper = f"  [paper: {p.paper_accuracy}]" if p.paper_accuracy else ""
        print(f"{name:<{width}}  {p.description}{paper}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from fastdistill import backend_info

    print(json.dumps(backend_info(), indent=2, default=str))
    return 0


def _device(name: str | None) -> torch.device:
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _init_torchrun(device: torch.device) -> torch.device:
    """Under ``torchrun`` (WORLD_SIZE > 1): join the process group (NCCL on GPUs, gloo on CPUs)
    and give each rank its own GPU. Returns the device this rank uses."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def _cmd_distill(args: argparse.Namespace) -> int:
    from fastdistill import backend_info
    from fastdistill.engine.outer import Distiller
    from fastdistill.evaluate import distillation_ratio, train_full_data
    from fastdistill.models import build_model_for

    preset = get_preset(args.preset)
    overrides: dict[str, Any] = {}
    for key in ("iterations", "seed", "engine", "eval_nets", "full_data_epochs", "dtype"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    overrides.update(_parse_overrides(args.set))
    config = preset.config.replace(**overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = _init_torchrun(_device(args.device))
    from fastdistill.engine.distributed import is_main_rank

    main_rank = is_main_rank()
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    distiller = Distiller(config, device=device, data_root=args.data_root, download=args.download)
    load_time = time.perf_counter() - start
    ckpt = out / "checkpoint.safetensors"
    if args.resume and ckpt.exists():
        distiller.load_checkpoint(ckpt, allow_device_change=args.allow_device_change)
        if main_rank:
            print(f"resumed from {ckpt} at iteration {distiller.iteration}")
    if main_rank:
        print(
            f"distilling preset {args.preset}: {distiller.total_iterations} iterations on {device}, "
            f"model {config.model} ({distiller.model.num_params} parameters), "
            f"{distiller.distilled.num_samples} distilled samples, T={config.total_steps}"
        )

    def report_line(d: Distiller, stats: dict[str, float]) -> None:
        if args.log_every and d.iteration % args.log_every == 0:
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

    distiller.fit(
        progress=not args.quiet and main_rank,
        checkpoint_path=ckpt,
        checkpoint_every=args.checkpoint_every,
        callback=report_line if main_rank else None,
    )
    if not main_rank:  # every rank holds the same set; rank 0 evaluates and writes
        return 0
    distiller.distilled.save(out / "distilled.safetensors")
    decoded = None
    if distiller.data.describe().get("kind") == "text":
        from fastdistill.decode import decode_distilled, write_decoded

        t0 = time.perf_counter()
        decoded = write_decoded(decode_distilled(distiller.distilled, distiller.data), out)[0]
        print(f"decoded nearest sentences in {time.perf_counter() - t0:.2f}s -> {decoded}")

    t0 = time.perf_counter()
    acc = distiller.evaluate()
    eval_time = time.perf_counter() - t0
    print(f"test accuracy ({config.init} init): {acc}")
    report: dict[str, Any] = {
        "preset": args.preset,
        "test_accuracy": acc.to_dict(),
        "paper_accuracy": preset.paper_accuracy,
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
        "dataset": distiller.data.describe(),
    }
    if decoded is not None:
        report["decoded_sentences"] = str(decoded)
    if config.full_data_epochs > 0:
        module = build_model_for(config.model, distiller.data, **config.model_kwargs)
        full = train_full_data(
            module.to(device, distiller.dtype),
            distiller.data,
            epochs=config.full_data_epochs,
            seed=config.seed,
            scheme=config.init_scheme,
        )
        report["full_data_accuracy"] = full
        report["distillation_ratio"] = distillation_ratio(acc.mean, full)
        print(f"full-data accuracy: {100 * full:.2f}%  ->  r = {report['distillation_ratio']:.1f}")
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out / 'distilled.safetensors'} and {out / 'report.json'}")
    return 0


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
    parser = argparse.ArgumentParser(prog="fastdistill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("presets", help="list the named configurations").set_defaults(fn=_cmd_presets)
    sub.add_parser(
        "info", help="which backend (kernels or reference) is in use, and why"
    ).set_defaults(fn=_cmd_info)

    d = sub.add_parser("distill", help="distill a dataset with a preset")
    d.add_argument("--preset", required=True)
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--iterations", type=int, help="outer iterations (default: the preset's)")
    d.add_argument("--seed", type=int)
    d.add_argument("--engine", choices=["adjoint", "unroll"])
    d.add_argument("--eval-nets", type=int, help="random-init nets to evaluate (default 200)")
    d.add_argument(
        "--full-data-epochs",
        type=int,
        help="also train on all real data for this many epochs, for the ratio r_M",
    )
    d.add_argument("--dtype", choices=["float32", "float64"])
    d.add_argument("--data-root", help="folder laid out like ../shared/data (default: found)")
    d.add_argument("--download", action="store_true", help="allow dataset downloads")
    d.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    d.add_argument("--threads", type=int, help="CPU threads for torch")
    d.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.add_argument("--log-every", type=int, default=0, help="print a line every N iterations")
    d.add_argument(
        "--allow-device-change",
        action="store_true",
        help="with --resume: continue a checkpoint written on another device type (CPU <-> "
        "CUDA); random-init draws are re-seeded, so the resume is not exact",
    )
    d.add_argument(
        "--checkpoint-every",
        type=int,
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
    e.add_argument("--nets", type=int, default=200)
    e.add_argument("--seed", type=int, default=0)
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
        type=int,
        metavar="N",
        help="time N iterations of each distillation cell and record the projected wall time",
    )
    r.add_argument("--eval-nets", type=int, help="random-init nets per evaluation (default 200)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override every cell")
    r.add_argument("--data-root")
    r.add_argument("--download", action="store_true")
    r.add_argument("--device", default="auto")
    r.add_argument("--threads", type=int)
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(fn=_cmd_reproduce)
    s = sub.add_parser("show", help="render the figures of a saved run (PNG and PDF)")
    s.add_argument("run_dir", help="a `fastdistill distill` output folder")
    s.add_argument("--out", help="output folder (default RUN_DIR/figures)")
    s.set_defaults(fn=_cmd_show)
    return parser


def _interrupt_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A job scheduler's or `timeout`'s SIGTERM stops a run like Ctrl-C does: the running
    # distillation writes its checkpoint before exiting, so `--resume` loses nothing.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"fastdistill: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"fastdistill: interrupted ({err or 'Ctrl-C'})", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
