"""The ``svs`` command: refine a checkpoint, inspect its spectra, or run the built-in demo."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

from . import io
from .presets import PRESETS, Role, select
from .model import RefineError, refine_model, refine_state_dict
from .spectrum import describe, plot_spectra, singular_values


def _selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="generic", choices=sorted(PRESETS), help="layer rule (default: generic)")
    p.add_argument("--map", default="sqrt", help="sigma map: sqrt, log1p, abslog, power:<p>, ones, spectral, square, identity")
    p.add_argument("--include", help="regex: only parameters whose name matches")
    p.add_argument("--exclude", help="regex: skip parameters whose name matches")


def _progress_default() -> bool:
    return sys.stderr.isatty()


def cmd_refine(args: argparse.Namespace) -> int:
    src, dst = Path(args.input), Path(args.output)
    if dst.exists() and dst.resolve() == src.resolve():
        raise SystemExit(f"svs refine: refusing to overwrite the input {src}; choose another -o")
    if dst.exists() and not args.force:
        raise SystemExit(f"svs refine: {dst} exists; pass --force to replace it")
    ckpt = io.load(src)
    kwargs = dict(preset=args.preset, include=args.include, exclude=args.exclude, map=args.map,
                  method=args.method, dry_run=args.dry_run, progress=not args.quiet and _progress_default())
    if isinstance(ckpt.obj, torch.nn.Module):
        report = refine_model(ckpt.obj, **kwargs)
    else:
        ckpt.obj, report = refine_state_dict(ckpt.obj, **kwargs)
    if not args.quiet:
        print(report)
    if args.report:
        io.atomic_write(Path(args.report), lambda tmp: Path(tmp).write_text(json.dumps(report.to_dict(), indent=1)))
    if args.dry_run:
        print("dry run: nothing written")
        return 0
    io.save(ckpt, dst)
    print(f"wrote {dst} ({ckpt.format if dst.suffix != '.safetensors' else 'safetensors'})")
    return 0


def _map_values(s: torch.Tensor, name: str) -> torch.Tensor:
    """f(s) for the spectrum plot: the operator on diag(s) gives exactly f applied by the kernel."""
    from .ops import refine

    return torch.linalg.svdvals(refine([torch.diag(s)], map=name)[0][0])


def cmd_inspect(args: argparse.Namespace) -> int:
    ckpt = io.load(args.input)
    tensors = ckpt.tensors()
    roles = select(tensors, args.preset, args.include, args.exclude)
    names = [n for n, r in roles.items() if r is Role.WEIGHT]
    if not names:
        raise SystemExit("svs inspect: no weight selected")
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
        plot_spectra({"before": spectra, f"after SVS ({args.map})": after}, args.plot,
                     title=f"{Path(args.input).name}: singular values of {len(names)} weights")
        print(f"wrote {args.plot}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .pruning import build_ddpm_cifar10, prune_unet

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"building the CIFAR-10 DDPM UNet (random weights) and pruning {args.ratio:.0%} with torch-pruning ...")
    model = prune_unet(build_ddpm_cifar10(seed=args.seed), args.ratio)
    print(f"pruned model: {sum(p.numel() for p in model.parameters()):,} parameters")
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    t0 = time.perf_counter()
    report = refine_model(model, preset="ddpm", map=args.map, progress=_progress_default())
    print(report)
    print(f"refine_model total (with before/after spectra): {time.perf_counter() - t0:.2f} s")
    names = [r.name for r in report.weights]
    before = singular_values([weights[n] for n in names])
    after = singular_values([dict(model.named_parameters())[n] for n in names])
    plot = out / "spectrum.png"
    plot_spectra({"pruned": before, "pruned + SVS": after}, str(plot),
                 title=f"DDPM CIFAR-10 pruned {args.ratio:.0%}: singular values of {len(names)} weights")
    io.atomic_write(out / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report.to_dict(), indent=1)))
    print(f"wrote {plot} and {out / 'report.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svs", description="Singular Value Scaling of pruned models")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("refine", help="refine a checkpoint (.safetensors, state-dict .pt, or pickled module)")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True, help="output file (never the input)")
    _selection_args(p)
    p.add_argument("--method", default="auto", help="decomposition route (default: auto)")
    p.add_argument("--dry-run", action="store_true", help="report what would be refined, write nothing")
    p.add_argument("--report", help="also write the report as JSON to this file")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("-q", "--quiet", action="store_true", help="no table, no progress bar")
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser("inspect", help="per-layer spectrum statistics, optionally a before/after plot")
    p.add_argument("input")
    _selection_args(p)
    p.add_argument("--plot", help="write the singular value distribution before/after SVS to this PNG")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("demo", help="prune the CIFAR-10 DDPM UNet 50%%, refine it, report and plot")
    p.add_argument("--out", default="svs-demo", help="output folder (default: svs-demo)")
    p.add_argument("--ratio", type=float, default=0.5, help="pruning ratio (default: 0.5)")
    p.add_argument("--map", default="sqrt")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RefineError, ValueError, FileNotFoundError) as err:
        print(f"svs {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
