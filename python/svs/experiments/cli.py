"""The subcommands of the digits pipeline (``svs demo``, ``prune``, ``finetune``, ``sample``).

:func:`add_experiment_commands` adds them to the ``svs`` command, which finds it through the
``svs.commands`` entry point (pyproject.toml); the pipeline itself is imported only when one runs,
so the commands are listed, and ``svs refine`` and ``svs inspect`` work, without the extra.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from .. import io
from ..cli_common import HelpFormatter, UsageError, check_image, check_output, progress_default
from ..extras import require
from ..model import refine_model
from ..plots import plot_spectra, pyplot, save_figure
from ..spectrum import singular_values


def _pipeline(what: str):
    """svs.experiments.pipelines, or MissingExtra naming the ``experiments`` extra."""
    require("experiments", what)
    from . import pipelines

    return pipelines


def cmd_demo(args: argparse.Namespace) -> int:
    """The paper's pipeline, short: bundled teacher -> prune -> with / without SVS -> fine-tune."""
    pl = _pipeline("svs demo")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; -o/--output takes a folder")
    check_output(out / "demo.json" if out.is_dir() else out, True)
    images = pl.digits()[0]
    teacher = pl.load_teacher()
    print(f"bundled teacher: DDPM UNet, {sum(p.numel() for p in teacher.parameters()):,} parameters, "
          f"trained on scikit-learn's digits (16x16)")
    evaluate = pl.Evaluator(teacher, n=args.eval_samples, ddim_steps=20)
    teacher_eval = evaluate(teacher)
    pruned = pl.student(teacher, args.ratio, "pruned", seed=args.seed, images=images)
    refined = copy.deepcopy(pruned)
    report = refine_model(refined, preset="ddpm")
    print(report.summary())  # the per-weight spectra: spectrum.png at the end
    names = [r.name for r in report.weights]
    before = singular_values([dict(pruned.named_parameters())[n] for n in names])
    after = singular_values([dict(refined.named_parameters())[n] for n in names])
    results = {}
    for variant, model in (("pruned", pruned), ("svs", refined)):
        print(f"{variant}: {sum(p.numel() for p in model.parameters()):,} parameters; fine-tuning {args.steps} steps")
        cfg = pl.TrainConfig(steps=args.steps, batch_size=64, seed=args.seed, log_every=max(1, args.steps // 4))
        results[variant] = pl.train_ddpm(model, images, cfg, eval_fn=evaluate,
                                      eval_every=max(1, args.steps // 4), progress=progress_default())["eval"]
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
    print("(+SVS is the authors' recipe: SVS and the GroupNorm reset. One seed, a short budget: "
          "docs/results/svs_experiment/results.md has SVS over seeds, sparsities, criteria and maps; "
          "on this teacher it has not beaten fine-tuning the pruned weights directly.)")
    return 0


def _plot_fid(results: dict, teacher_fid: float, path: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    for variant, evals in results.items():
        ax.plot([e["step"] for e in evals], [e["fid"] for e in evals], marker="o", label=variant)
    ax.axhline(teacher_fid, color="gray", linestyle=":", label="teacher")
    ax.set_yscale("log")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("FID (classifier features)")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def cmd_prune(args: argparse.Namespace) -> int:
    pl = _pipeline("svs prune")

    dst = Path(args.output)
    check_output(dst, args.force, [args.input])
    teacher = pl.load_model(args.input, trust_pickle=args.trust_pickle)
    variant = "svs" if args.svs else "pruned"
    model = pl.student(teacher, args.ratio, variant, importance=args.importance, seed=args.seed, images=pl.digits()[0])
    print(f"pruned {args.ratio:.0%} ({args.importance}){' + SVS' if args.svs else ''}: "
          f"{sum(p.numel() for p in teacher.parameters()):,} -> {sum(p.numel() for p in model.parameters()):,} parameters")
    io.save(io.Checkpoint("module", model), dst)
    print(f"wrote {dst} (pickled module: the pruned architecture has no config)")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    pl = _pipeline("svs finetune")

    dst = Path(args.output)
    check_output(dst, args.force, [args.input])
    model = pl.load_model(args.input, trust_pickle=args.trust_pickle)
    resume = Path(args.checkpoint) if args.checkpoint else dst.with_suffix(dst.suffix + ".ckpt")
    args.interrupted_note = f"{dst} not written; the training state saved so far (if any) is in {resume}: run again to resume"
    # a loss is logged every 50 steps, and at the end of a shorter run
    cfg = pl.TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         log_every=max(1, min(50, args.steps)))
    history = pl.train_ddpm(model, pl.digits()[0], cfg, checkpoint=resume,
                            progress=not args.quiet and progress_default())
    io.save(io.Checkpoint("module", model), dst)
    last = history["loss"][-1] if history["loss"] else None
    loss = (f"mean loss {last['loss']:.4f} over steps {last['step'] - cfg.log_every + 1}-{last['step']}"
            if last else "no loss logged")
    print(f"fine-tuned {args.steps} steps ({loss}); wrote {dst} (EMA weights); resumable state in {resume}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    pl = _pipeline("svs sample")
    from ..plots import save_image_grid

    check_output(Path(args.output), True, [args.input])
    check_image(Path(args.output))
    model = pl.load_model(args.input, trust_pickle=args.trust_pickle)
    images = pl.sample_ddim(model, args.n, steps=args.steps, seed=args.seed)
    io.atomic_write(args.output, lambda tmp: save_image_grid(images, tmp))
    print(f"wrote {args.output} ({args.n} DDIM samples, {args.steps} steps, seed {args.seed})")
    return 0


def add_experiment_commands(sub, common: argparse.ArgumentParser, loads: argparse.ArgumentParser) -> None:
    """Adds prune, finetune, sample and demo to the ``svs`` subparsers ``sub``."""
    p = sub.add_parser("prune", parents=[loads], formatter_class=HelpFormatter,
                       help="prune a UNet ('teacher' = the bundled digits DDPM), optionally apply SVS")
    p.add_argument("input", help="'teacher' or a checkpoint (pickled module, or state dict of the teacher architecture)")
    p.add_argument("-o", "--output", required=True, help="the pruned model (a pickled module)")
    p.add_argument("--ratio", type=float, default=0.5, help="pruning ratio")
    p.add_argument("--importance", default="taylor", choices=["magnitude", "taylor"], help="channel importance")
    p.add_argument("--svs", action="store_true", help="apply SVS (ddpm preset) after pruning")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("finetune", parents=[loads], formatter_class=HelpFormatter,
                       help="fine-tune with the DDPM loss on the bundled digits (resumable)")
    p.add_argument("input", help="'teacher' or a checkpoint (as for prune)")
    p.add_argument("-o", "--output", required=True, help="the fine-tuned model (EMA weights, a pickled module)")
    p.add_argument("--steps", type=int, default=1000, help="training steps")
    p.add_argument("--batch-size", type=int, default=64, help="images per step")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--checkpoint", help="resumable training state (default: OUTPUT.ckpt); rerun to resume")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("sample", parents=[loads], formatter_class=HelpFormatter, help="DDIM samples of a model as a PNG grid")
    p.add_argument("input", help="'teacher' or a checkpoint (as for prune)")
    p.add_argument("-o", "--output", required=True, help="image file (.png, .pdf, .svg)")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("demo", parents=[common], formatter_class=HelpFormatter,
                       help="bundled teacher, prune 50%%, fine-tune with and without SVS, compare")
    p.add_argument("-o", "--output", default="svs-demo", help="output folder")
    p.add_argument("--out", dest="output", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # the old spelling, deprecated
    p.add_argument("--ratio", type=float, default=0.5, help="pruning ratio")
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps per variant")
    p.add_argument("--eval-samples", type=int, default=256, help="samples per FID / SSIM evaluation")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=cmd_demo)
