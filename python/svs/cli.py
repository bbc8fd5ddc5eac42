"""The ``svs`` command: refine a checkpoint or inspect its spectra. More subcommands join from the
installed packages' ``svs.commands`` entry points (pyproject.toml registers the demo and the digits
pipeline's, :mod:`svs.experiments.cli`), so this module imports none of them.

Every ordinary mistake (a wrong path, a corrupt file, a bad regular expression, an unwritable
output, a closed pipe) is one line on stderr and exit status 2; ``--debug`` or ``SVS_DEBUG=1``
shows the traceback. Ctrl-C or SIGTERM prints one line and exits 130 / 143 with nothing written.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

import torch

from . import __version__, io
from .cli_common import (HelpFormatter, UsageError, check_image, check_output, check_report, progress_default,
                         refine_options, resolve_output)
from .extras import MissingExtra
from .interrupt import own_process
from .layouts import of_directory
from .model import check_device, refine_model, refine_state_dict
from .ops import MAPS, _is_map, method_names
from .options import DEFAULTS
from .engine import RefineError
from .plots import plot_spectra
from .report import counted, progress_bar
from .presets import PRESETS


class Terminated(KeyboardInterrupt):
    """SIGTERM, stopped the same clean way as Ctrl-C."""


# The entry point group of the subcommands other packages (and svs.experiments) add.
COMMANDS = "svs.commands"

# Errors that are the user's or the system's, not the program's: one line, no traceback.
ORDINARY = (UsageError, ValueError, OSError, RefineError, MemoryError, MissingExtra)


def _selection_args(p: argparse.ArgumentParser, preset: Optional[str] = DEFAULTS.preset,
                    map: Optional[str] = DEFAULTS.map) -> None:
    p.add_argument("--preset", default=preset, choices=sorted(PRESETS), help="layer rule" + (
        "" if preset else " (default: the one svs refine used for a refined directory, else generic)"))
    p.add_argument("--map", default=map, metavar="MAP", help=f"sigma map: {', '.join(MAPS)} (e.g. power:0.25)"
                   + ("" if map else f" (default: {DEFAULTS.map})"))
    p.add_argument("--include", metavar="REGEX", help="only parameters whose name matches")
    p.add_argument("--exclude", metavar="REGEX", help="skip parameters whose name matches")


def cmd_refine(args: argparse.Namespace) -> int:
    src = Path(args.input)
    if src.is_dir():  # a Hugging Face style directory, shard by shard (and over torchrun's ranks)
        from .sharded import cmd_refine_dir

        return cmd_refine_dir(args)
    dst = None if args.dry_run else args.output and resolve_output(Path(args.output))
    if not args.dry_run and not dst:
        raise UsageError("give the output file with -o (or --dry-run to only report)")
    report_path = args.report and resolve_output(Path(args.report))
    if args.report:
        check_report(Path(args.report), src, dst)
    for path in (p for p in (dst, report_path) if p):
        check_output(path, args.force, [args.input])
    device = check_device(args.device)
    with contextlib.ExitStack() as held:  # a second run on these outputs fails while this one runs
        for path in (p for p in (dst, report_path) if p):
            held.enter_context(io.claim(path))
        return _refine_file(args, src, dst, report_path, device)


def _refine_file(args: argparse.Namespace, src: Path, dst: Optional[Path], report_path: Optional[Path],
                 device: torch.device) -> int:
    ckpt = io.load(src, trust_pickle=args.trust_pickle)
    if device.type != "cpu":  # refined there, written from the CPU
        ckpt.obj = ckpt.obj.to(device) if isinstance(ckpt.obj, torch.nn.Module) else {
            k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in ckpt.obj.items()}
    kwargs = dataclasses.asdict(refine_options(args))
    if isinstance(ckpt.obj, torch.nn.Module):
        report = refine_model(ckpt.obj, **kwargs)
    else:
        # a file of a Hugging Face folder: its config.json's modules say how each layer is stored
        ckpt.obj, report = refine_state_dict(ckpt.obj, layouts=of_directory(src.parent, ckpt.obj), **kwargs)
    if device.type != "cpu":
        ckpt.obj = ckpt.obj.cpu() if isinstance(ckpt.obj, torch.nn.Module) else {
            k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in ckpt.obj.items()}
    files = {dst: io.writer(ckpt, dst)} if dst else {}
    if report_path:
        files[report_path] = lambda tmp: Path(tmp).write_text(json.dumps(report.to_dict(), indent=1))
    io.atomic_write_all(files, replace=args.force)
    if not args.quiet:
        print(report)
    if args.dry_run:
        print("dry run: nothing written" + (f" but the report {args.report}" if args.report else ""))
    else:
        print(f"wrote {dst} ({ckpt.format if dst.suffix != '.safetensors' else 'safetensors'})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Per weight, kappa and the top singular value's energy share before and after SVS, a
    summary with the verdict, optionally the before/after plot (:mod:`svs.inspection`)."""
    from .inspection import describe, measure, refine_record, selected, sources, table

    src = Path(args.input)
    record = refine_record(src)
    if record is not None and args.map is not None:
        raise UsageError(f"{src} was refined by svs refine (its weights are after SVS); --map applies to a checkpoint "
                         "before refinement")
    if args.plot:
        check_output(Path(args.plot), True, [args.input])
        check_image(Path(args.plot))
    if record is not None:
        print(f"refined by svs {record['svs_version']} (torch {record['torch']}) on {record['date']} from "
              f"{record['source']}: preset {record['preset']}, map {record['map']}, method {record['method']}")
    preset = args.preset or (record or {}).get("preset", DEFAULTS.preset)
    map_ = args.map or (record or {}).get("map", DEFAULTS.map)
    if not _is_map(map_):
        raise UsageError(f"unknown map {map_!r}; expected one of {', '.join(MAPS)} (e.g. power:0.25)")
    plan = []
    for source in sources(src, args.trust_pickle):
        weights, skipped = selected(source, preset, args.include, args.exclude)
        for name, why in skipped.items():
            print(f"skipped {source.prefix}{name}: {why}")
        plan.append((source, weights))
    total = sum(len(w) for _, w in plan)
    if not total:
        raise UsageError("no weight selected; check --preset, --include and --exclude")
    with progress_bar(total, not args.quiet and progress_default()) as bar:
        stats, before, after = measure(plan, map_, record, lambda: bar.update(1))
    refined = record is not None
    print("\n".join(([] if args.quiet else table(stats, refined)) + describe(stats, refined, map_)))
    if args.plot:
        curves = {f"as refined ({map_})": after} if refined else {"before": before, f"after SVS ({map_})": after}
        io.atomic_write(args.plot, lambda tmp: plot_spectra(
            curves, tmp, title=f"{src.name}: singular values of {counted(len(stats), 'weight')}"))
        print(f"wrote {args.plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svs", description="Singular Value Scaling of pruned models",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action=_Version, help="show the versions of svs, torch, the extension and triton")
    # Global options are taken before or after the subcommand: SUPPRESS in the subcommand keeps
    # its default from overwriting a value given before it.
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or set SVS_DEBUG=1)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error (or set SVS_DEBUG=1)")
    loads = argparse.ArgumentParser(add_help=False, parents=[common])
    loads.add_argument("--trust-pickle", action="store_true",
                       help="allow a whole pickled module (torch.save(model)): this runs code from the file, "
                            "so only for files you trust")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("refine", parents=[loads], formatter_class=HelpFormatter,
                       help="refine a checkpoint (.safetensors, state-dict .pt, pickled module, or a Hugging "
                            "Face directory of safetensors shards; under torchrun the ranks share the work)")
    p.add_argument("input", help="a .safetensors or .pt file, a Hugging Face or diffusers directory")
    p.add_argument("-o", "--output", help="output file, or folder for a directory (never the input); not needed with --dry-run")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (under torchrun each rank's own GPU)")
    _selection_args(p)
    methods = {d: method_names(d) for d in ("cpu", "cuda")}
    p.add_argument("--method", default=DEFAULTS.method, help="decomposition route; " + "; ".join(
        f"on {d}: {', '.join(m)}" for d, m in methods.items() if m))
    p.add_argument("--no-certify", action="store_true",
                   help="skip the check of every result against its weight (README: The certificate)")
    p.add_argument("--dry-run", action="store_true", help="report what would be refined, write nothing")
    p.add_argument("--report", help="also write the report as JSON to this file")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("-q", "--quiet", action="store_true", help="no table, no progress bar")
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser("inspect", parents=[loads], formatter_class=HelpFormatter,
                       help="per weight: condition number and top singular value's share, before and after SVS, "
                            "and whether the model looks like the case SVS targets; optionally a plot")
    p.add_argument("input", help="a .safetensors or .pt file, a Hugging Face or diffusers directory, or one svs refine wrote")
    _selection_args(p, preset=None, map=None)
    p.add_argument("--plot", help="write the singular value distribution before/after SVS to this image (.png, .pdf, .svg)")
    p.add_argument("-q", "--quiet", action="store_true", help="only the summary: no table, no progress bar")
    p.set_defaults(func=cmd_inspect)

    for add_commands in _registered_commands():
        add_commands(sub, common, loads)
    return parser


def _registered_commands():
    """The functions of the ``svs.commands`` entry points, in name order: each adds its subcommands
    to the ``svs`` subparsers, given the parents of the global options (``common``) and of the
    loading options (``loads``). One that cannot be imported is left out, so ``svs refine`` and
    ``svs inspect`` work whatever else is installed."""
    from importlib.metadata import entry_points

    found = []
    for entry in sorted(entry_points(group=COMMANDS), key=lambda e: e.name):
        try:
            found.append(entry.load())
        except ImportError:
            continue
    return found


class _Version(argparse.Action):
    """``--version``: what was built and found, read when asked (not at every start)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version

        import svs_kernels

        info = svs_kernels.backend_info()
        try:
            triton = info["triton"] or version("triton")
        except PackageNotFoundError:
            triton = "not installed"
        print(f"svs {__version__} (torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}); extension "
              f"svs_kernels: CUDA kernel {'built' if info['refine_cuda'] else 'not built'}, reconstruction "
              f"{info['reconstruct']}; triton {triton}")
        parser.exit()


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    if isinstance(err, MemoryError):
        return "out of memory"
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _terminate(signum, frame):
    raise Terminated()


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `svs`: the help, not an error
        parser.print_help()
        return 0
    debug = args.debug or os.environ.get("SVS_DEBUG", "") not in ("", "0")
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        with own_process():  # decompositions in svs.interrupt's worker, so Ctrl-C lands at once
            code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except KeyboardInterrupt as err:
        what = "terminated" if isinstance(err, Terminated) else "interrupted"
        print(f"svs {args.command}: {what}; {getattr(args, 'interrupted_note', 'nothing was written')}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # A decomposition may still run in svs.interrupt's worker thread: leave without the
        # interpreter's teardown, which can abort (SIGABRT) under OpenMP/MKL threads still working.
        os._exit(128 + (signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT))
    except BrokenPipeError:
        if debug:
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        print(f"svs {args.command}: error: output closed early (broken pipe)", file=sys.stderr)
        return 2
    except ORDINARY as err:
        if debug:
            raise
        print(f"svs {args.command}: error: {_describe(err)}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
