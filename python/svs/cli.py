"""The ``svs`` command: refine a checkpoint or inspect its spectra; the demo and the digits pipeline's
subcommands come from :mod:`svs.experiments.cli`.

Every ordinary mistake (a wrong path, a corrupt file, a bad regular expression, an unwritable
output, a closed pipe) is one line on stderr and exit status 2; ``--debug`` or ``SVS_DEBUG=1``
shows the traceback. Ctrl-C or SIGTERM prints one line and exits 130 / 143 with nothing written.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

import torch

from . import __version__, io
from .cli_common import UsageError, check_image, check_output, progress_default
from .experiments.cli import add_experiment_commands
from .extras import MissingExtra
from .interrupt import own_process
from .model import refine_model, refine_state_dict
from .tensors import RefineError, skip_unusable
from .plots import plot_spectra
from .presets import PRESETS, Role, select
from .spectrum import describe, singular_values


class Terminated(KeyboardInterrupt):
    """SIGTERM, stopped the same clean way as Ctrl-C."""


# Errors that are the user's or the system's, not the program's: one line, no traceback.
ORDINARY = (UsageError, ValueError, OSError, RefineError, MemoryError, MissingExtra)


def _selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="generic", choices=sorted(PRESETS), help="layer rule (default: generic)")
    p.add_argument("--map", default="sqrt", help="sigma map: sqrt, log1p, abslog, power:<p>, ones, spectral, square, identity")
    p.add_argument("--include", help="regex: only parameters whose name matches")
    p.add_argument("--exclude", help="regex: skip parameters whose name matches")


def cmd_refine(args: argparse.Namespace) -> int:
    src = Path(args.input)
    if src.is_dir():  # a Hugging Face style directory, shard by shard (and over torchrun's ranks)
        from .sharded import cmd_refine_dir

        return cmd_refine_dir(args)
    dst = None if args.dry_run else args.output and Path(args.output)
    if not args.dry_run and not dst:
        raise UsageError("give the output file with -o (or --dry-run to only report)")
    outputs = [p for p in (dst, args.report and Path(args.report)) if p]
    if len(outputs) == 2 and outputs[0].absolute() == outputs[1].absolute():
        raise UsageError("-o and --report name the same file")
    for path in outputs:
        check_output(path, args.force, [args.input])
    ckpt = io.load(src, trust_pickle=args.trust_pickle)
    kwargs = dict(preset=args.preset, include=args.include, exclude=args.exclude, map=args.map,
                  method=args.method, certify=not args.no_certify, dry_run=args.dry_run, progress=not args.quiet and progress_default())
    if isinstance(ckpt.obj, torch.nn.Module):
        report = refine_model(ckpt.obj, **kwargs)
    else:
        ckpt.obj, report = refine_state_dict(ckpt.obj, **kwargs)
    files = {dst: io.writer(ckpt, dst)} if dst else {}
    if args.report:
        files[Path(args.report)] = lambda tmp: Path(tmp).write_text(json.dumps(report.to_dict(), indent=1))
    io.atomic_write_all(files)
    if not args.quiet:
        print(report)
    if args.dry_run:
        print("dry run: nothing written" + (f" but the report {args.report}" if args.report else ""))
    else:
        print(f"wrote {dst} ({ckpt.format if dst.suffix != '.safetensors' else 'safetensors'})")
    return 0


def _map_values(s: torch.Tensor, name: str) -> torch.Tensor:
    """f(s) for the spectrum plot: the operator on diag(s) gives exactly f applied by the kernel."""
    from .ops import refine

    return torch.linalg.svdvals(refine([torch.diag(s)], map=name)[0][0])


def cmd_inspect(args: argparse.Namespace) -> int:
    if Path(args.input).is_dir():
        from .sharded import cmd_inspect_dir

        return cmd_inspect_dir(args)
    if args.plot:
        check_output(Path(args.plot), True, [args.input])
        check_image(Path(args.plot))
    ckpt = io.load(args.input, trust_pickle=args.trust_pickle)
    tensors = ckpt.tensors()
    roles = select(tensors, args.preset, args.include, args.exclude)
    for name, why in skip_unusable(tensors, roles).items():
        print(f"skipped {name}: {why}")
    names = [n for n, r in roles.items() if r is Role.WEIGHT]
    if not names:
        raise UsageError("no weight selected; check --preset, --include and --exclude")
    spectra = singular_values([tensors[n] for n in names])
    width = max(len(n) for n in names)
    print(f"{'parameter'.ljust(width)}  {'shape':>14}  {'s_max':>9}  {'s_min':>9}  {'kappa':>9}  top10%-energy")
    for name, s in zip(names, spectra):
        d = describe(s)
        shape = "x".join(map(str, tensors[name].shape))
        print(f"{name.ljust(width)}  {shape:>14}  {d['s_max']:9.4g}  {d['s_min']:9.4g}  {d['kappa']:9.3g}  {d['top10_energy']:.3f}")
    kappas = torch.tensor([describe(s)["kappa"] for s in spectra])
    print(f"{len(names)} weights; median kappa {kappas.median():.3g}, max kappa {kappas.max():.3g}")
    if args.plot:
        after = [_map_values(s, args.map) for s in spectra]
        io.atomic_write(args.plot, lambda tmp: plot_spectra(
            {"before": spectra, f"after SVS ({args.map})": after}, tmp,
            title=f"{Path(args.input).name}: singular values of {len(names)} weights"))
        print(f"wrote {args.plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svs", description="Singular Value Scaling of pruned models")
    parser.add_argument("--version", action="version", version=f"svs {__version__} (torch {torch.__version__})")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error (or set SVS_DEBUG=1)")
    loads = argparse.ArgumentParser(add_help=False, parents=[common])
    loads.add_argument("--trust-pickle", action="store_true",
                       help="allow a whole pickled module (torch.save(model)): this runs code from the file, "
                            "so only for files you trust")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("refine", parents=[loads],
                       help="refine a checkpoint (.safetensors, state-dict .pt, pickled module, or a Hugging "
                            "Face directory of safetensors shards; under torchrun the ranks share the work)")
    p.add_argument("input")
    p.add_argument("-o", "--output", help="output file, or folder for a directory (never the input); not needed with --dry-run")
    p.add_argument("--device", default="cpu", help="directories: cpu, or cuda (under torchrun each rank's own GPU)")
    _selection_args(p)
    p.add_argument("--method", default="auto", help="decomposition route (default: auto)")
    p.add_argument("--no-certify", action="store_true",
                   help="skip the check of every result against its weight (README: The certificate)")
    p.add_argument("--dry-run", action="store_true", help="report what would be refined, write nothing")
    p.add_argument("--report", help="also write the report as JSON to this file")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("-q", "--quiet", action="store_true", help="no table, no progress bar")
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser("inspect", parents=[loads], help="per-layer spectrum statistics, optionally a before/after plot")
    p.add_argument("input")
    _selection_args(p)
    p.add_argument("--plot", help="write the singular value distribution before/after SVS to this PNG")
    p.set_defaults(func=cmd_inspect)

    add_experiment_commands(sub, common, loads)
    return parser


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
    args = build_parser().parse_args(argv)
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
