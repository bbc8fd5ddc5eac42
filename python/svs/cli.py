"""The ``svs`` command: refine a checkpoint, inspect its spectra, or run the built-in demo.

Every ordinary mistake (a wrong path, a corrupt file, a bad regular expression, an unwritable
output, a closed pipe) is one line on stderr and exit status 2; ``--debug`` or ``SVS_DEBUG=1``
shows the traceback. Ctrl-C or SIGTERM prints one line and exits 130 / 143 with nothing written.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from . import __version__, io
from .presets import PRESETS, Role, select
from .interrupt import own_process
from .model import RefineError, refine_model, refine_state_dict, skip_unusable
from .spectrum import describe, plot_spectra, singular_values


class UsageError(Exception):
    """A mistake in what the user typed, found by the command itself."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, stopped the same clean way as Ctrl-C."""


# Errors that are the user's or the system's, not the program's: one line, no traceback.
ORDINARY = (UsageError, ValueError, OSError, RefineError, MemoryError)


def _selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="generic", choices=sorted(PRESETS), help="layer rule (default: generic)")
    p.add_argument("--map", default="sqrt", help="sigma map: sqrt, log1p, abslog, power:<p>, ones, spectral, square, identity")
    p.add_argument("--include", help="regex: only parameters whose name matches")
    p.add_argument("--exclude", help="regex: skip parameters whose name matches")


def _progress_default() -> bool:
    return sys.stderr.isatty()


def check_output(path: Path, force: bool, inputs: Sequence[str] = ()) -> None:
    """Refuses, before any work, an output that is an input, exists without ``force``, is a
    folder, or cannot be created."""
    for src in inputs:
        if path.exists() and Path(src).exists() and os.path.samefile(path, src):
            raise UsageError(f"refusing to overwrite the input {src}; choose another output")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name")
    if path.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to replace it")
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {path}: folder {folder} is not writable")


def check_image(path: Path) -> None:
    """Refuses an image path whose suffix matplotlib cannot write."""
    from matplotlib.backend_bases import FigureCanvasBase

    if path.suffix[1:].lower() not in FigureCanvasBase.get_supported_filetypes():
        raise UsageError(f"{path}: unknown image type {path.suffix or '(no suffix)'}; use .png, .pdf or .svg")


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
                  method=args.method, dry_run=args.dry_run, progress=not args.quiet and _progress_default())
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


def cmd_demo(args: argparse.Namespace) -> int:
    """The paper's pipeline, short: bundled teacher -> prune -> with / without SVS -> fine-tune."""
    from .pipelines import Evaluator, TrainConfig, digits, load_teacher, student, train_ddpm

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; --out takes a folder")
    check_output(out / "demo.json" if out.is_dir() else out, True)
    images = digits()[0]
    teacher = load_teacher()
    print(f"bundled teacher: DDPM UNet, {sum(p.numel() for p in teacher.parameters()):,} parameters, "
          f"trained on scikit-learn's digits (16x16)")
    evaluate = Evaluator(teacher, n=args.eval_samples, ddim_steps=20)
    teacher_eval = evaluate(teacher)
    pruned = student(teacher, args.ratio, "pruned", seed=args.seed, images=images)
    refined = copy.deepcopy(pruned)
    report = refine_model(refined, preset="ddpm")
    print(report)
    names = [r.name for r in report.weights]
    before = singular_values([dict(pruned.named_parameters())[n] for n in names])
    after = singular_values([dict(refined.named_parameters())[n] for n in names])
    results = {}
    for variant, model in (("pruned", pruned), ("svs", refined)):
        print(f"{variant}: {sum(p.numel() for p in model.parameters()):,} parameters; fine-tuning {args.steps} steps")
        cfg = TrainConfig(steps=args.steps, batch_size=64, seed=args.seed, log_every=max(1, args.steps // 4))
        results[variant] = train_ddpm(model, images, cfg, eval_fn=evaluate,
                                      eval_every=max(1, args.steps // 4), progress=_progress_default())["eval"]
    print(f"\nteacher: FID {teacher_eval['fid']:.2f}, confidence {teacher_eval['confidence']:.3f}")
    print(f"{'step':>6}  {'FID pruned':>10}  {'FID +SVS':>9}  {'SSIM pruned':>11}  {'SSIM +SVS':>9}")
    for a, b in zip(results["pruned"], results["svs"]):
        print(f"{a['step']:>6}  {a['fid']:10.2f}  {b['fid']:9.2f}  {a['ssim']:11.3f}  {b['ssim']:9.3f}")
    out.mkdir(exist_ok=True)
    io.atomic_write_all({
        out / "spectrum.png": lambda tmp: plot_spectra(
            {"pruned": before, "pruned + SVS": after}, tmp,
            title=f"digits DDPM pruned {args.ratio:.0%}: singular values of {len(names)} weights"),
        out / "fid.png": lambda tmp: _plot_fid(results, teacher_eval["fid"], tmp),
        out / "demo.json": lambda tmp: Path(tmp).write_text(json.dumps(
            {"teacher": teacher_eval, "ratio": args.ratio, "steps": args.steps, "eval": results}, indent=1)),
    })
    print(f"wrote {out / 'fid.png'}, {out / 'spectrum.png'} and {out / 'demo.json'}")
    return 0


def _plot_fid(results: dict, teacher_fid: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    for variant, evals in results.items():
        ax.plot([e["step"] for e in evals], [e["fid"] for e in evals], marker="o", label=variant)
    ax.axhline(teacher_fid, color="gray", linestyle=":", label="teacher")
    ax.set_yscale("log")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("FID (classifier features)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def cmd_prune(args: argparse.Namespace) -> int:
    from .pipelines import digits, load_model, student

    dst = Path(args.output)
    check_output(dst, args.force, [args.input])
    teacher = load_model(args.input, trust_pickle=args.trust_pickle)
    variant = "svs" if args.svs else "pruned"
    model = student(teacher, args.ratio, variant, importance=args.importance, seed=args.seed, images=digits()[0])
    print(f"pruned {args.ratio:.0%} ({args.importance}){' + SVS' if args.svs else ''}: "
          f"{sum(p.numel() for p in teacher.parameters()):,} -> {sum(p.numel() for p in model.parameters()):,} parameters")
    io.save(io.Checkpoint("module", model), dst)
    print(f"wrote {dst} (pickled module: the pruned architecture has no config)")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .pipelines import TrainConfig, digits, load_model, train_ddpm

    dst = Path(args.output)
    check_output(dst, args.force, [args.input])
    model = load_model(args.input, trust_pickle=args.trust_pickle)
    resume = Path(args.checkpoint) if args.checkpoint else dst.with_suffix(dst.suffix + ".ckpt")
    args.interrupted_note = f"{dst} not written; the training state saved so far (if any) is in {resume}: run again to resume"
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    history = train_ddpm(model, digits()[0], cfg, checkpoint=resume, progress=not args.quiet)
    io.save(io.Checkpoint("module", model), dst)
    last = history["loss"][-1]["loss"] if history["loss"] else float("nan")
    print(f"fine-tuned {args.steps} steps (last logged loss {last:.4f}); wrote {dst} (EMA weights); "
          f"resumable state in {resume}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .pipelines import load_model, sample_ddim
    from .spectrum import save_image_grid

    check_output(Path(args.output), True, [args.input])
    check_image(Path(args.output))
    model = load_model(args.input, trust_pickle=args.trust_pickle)
    images = sample_ddim(model, args.n, steps=args.steps, seed=args.seed)
    io.atomic_write(args.output, lambda tmp: save_image_grid(images, tmp))
    print(f"wrote {args.output} ({args.n} DDIM samples, {args.steps} steps, seed {args.seed})")
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

    p = sub.add_parser("prune", parents=[loads], help="prune a UNet ('teacher' = the bundled digits DDPM), optionally apply SVS")
    p.add_argument("input", help="'teacher' or a checkpoint (pickled module, or state dict of the teacher architecture)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--ratio", type=float, default=0.5, help="pruning ratio (default 0.5)")
    p.add_argument("--importance", default="taylor", choices=["magnitude", "taylor"])
    p.add_argument("--svs", action="store_true", help="apply SVS (ddpm preset) after pruning")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("finetune", parents=[loads], help="fine-tune with the DDPM loss on the bundled digits (resumable)")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", help="resumable training state (default: OUTPUT.ckpt); rerun to resume")
    p.add_argument("--force", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("sample", parents=[loads], help="DDIM samples of a model as a PNG grid")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True, help="PNG file")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("demo", parents=[common], help="bundled teacher, prune 50%%, fine-tune with and without SVS, compare")
    p.add_argument("--out", default="svs-demo", help="output folder (default: svs-demo)")
    p.add_argument("--ratio", type=float, default=0.5, help="pruning ratio (default: 0.5)")
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps per variant (default: 300)")
    p.add_argument("--eval-samples", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
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
