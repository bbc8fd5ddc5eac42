"""The ``svs`` command: refine a checkpoint, inspect its spectra, or run the built-in demo."""
from __future__ import annotations

import argparse
import copy
import json
import sys
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
    """The paper's pipeline, short: bundled teacher -> prune -> with / without SVS -> fine-tune."""
    from .pipelines import Evaluator, TrainConfig, digits, load_teacher, student, train_ddpm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
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
    plot_spectra({"pruned": before, "pruned + SVS": after}, str(out / "spectrum.png"),
                 title=f"digits DDPM pruned {args.ratio:.0%}: singular values of {len(names)} weights")
    _plot_fid(results, teacher_eval["fid"], out / "fid.png")
    io.atomic_write(out / "demo.json", lambda tmp: Path(tmp).write_text(json.dumps(
        {"teacher": teacher_eval, "ratio": args.ratio, "steps": args.steps, "eval": results}, indent=1)))
    print(f"wrote {out / 'fid.png'}, {out / 'spectrum.png'} and {out / 'demo.json'}")
    return 0


def _plot_fid(results: dict, teacher_fid: float, path: Path) -> None:
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


def _refuse_overwrite(src: str, dst: Path, force: bool) -> None:
    if dst.exists() and src != "teacher" and dst.resolve() == Path(src).resolve():
        raise SystemExit(f"svs: refusing to overwrite the input {src}; choose another -o")
    if dst.exists() and not force:
        raise SystemExit(f"svs: {dst} exists; pass --force to replace it")


def cmd_prune(args: argparse.Namespace) -> int:
    from .pipelines import digits, load_model, student

    dst = Path(args.output)
    _refuse_overwrite(args.input, dst, args.force)
    teacher = load_model(args.input)
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
    _refuse_overwrite(args.input, dst, args.force)
    model = load_model(args.input)
    resume = Path(args.checkpoint) if args.checkpoint else dst.with_suffix(dst.suffix + ".ckpt")
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

    model = load_model(args.input)
    images = sample_ddim(model, args.n, steps=args.steps, seed=args.seed)
    save_image_grid(images, args.output)
    print(f"wrote {args.output} ({args.n} DDIM samples, {args.steps} steps, seed {args.seed})")
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

    p = sub.add_parser("prune", help="prune a UNet ('teacher' = the bundled digits DDPM), optionally apply SVS")
    p.add_argument("input", help="'teacher' or a checkpoint (pickled module, or state dict of the teacher architecture)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--ratio", type=float, default=0.5, help="pruning ratio (default 0.5)")
    p.add_argument("--importance", default="taylor", choices=["magnitude", "taylor"])
    p.add_argument("--svs", action="store_true", help="apply SVS (ddpm preset) after pruning")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("finetune", help="fine-tune with the DDPM loss on the bundled digits (resumable)")
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

    p = sub.add_parser("sample", help="DDIM samples of a model as a PNG grid")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True, help="PNG file")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("demo", help="bundled teacher, prune 50%%, fine-tune with and without SVS, compare")
    p.add_argument("--out", default="svs-demo", help="output folder (default: svs-demo)")
    p.add_argument("--ratio", type=float, default=0.5, help="pruning ratio (default: 0.5)")
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps per variant (default: 300)")
    p.add_argument("--eval-samples", type=int, default=256)
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
