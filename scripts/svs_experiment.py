"""The paper's claim on the bundled digits teacher: pruned vs pruned + SVS vs random init.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/svs_experiment.py run --ratios 0.3 0.5 0.7 --seeds 0 1 2
    .venv/bin/python scripts/svs_experiment.py report

For every (ratio, variant, seed): prune the teacher (Diff-Pruning's Taylor importance), apply the
variant, fine-tune with an equal budget, and every `--eval-every` steps sample the EMA model with
DDIM from one fixed noise and measure FID (bundled classifier's features, vs all 1,797 real digits),
SSIM to the teacher's samples from the same noise, and the classifier's confidence. One JSON per
run in docs/results/svs_experiment/runs/ (runs already there are skipped, so it resumes);
`report` writes the table and plots.
"""
import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "results" / "svs_experiment"
ABLATION = ("pruned", "reset", "svs-keepnorm", "svs", "random")
# Each plan is a grid of runs; run ids name every setting, so plans share the runs they have in common.
PLANS = {
    "ablation": dict(importance=("taylor", "magnitude"), ratios=(0.5, 0.7), variants=ABLATION,
                     maps=("sqrt",), steps=800, eval_every=200),
    "long": dict(importance=("taylor",), ratios=(0.5,), variants=ABLATION[:4], maps=("sqrt",),
                 steps=3200, eval_every=400),
    "maps": dict(importance=("taylor",), ratios=(0.5,), variants=("svs",),
                 maps=("sqrt", "log1p", "abslog", "power:0.25", "ones", "spectral"), steps=800, eval_every=200),
    "sparsity": dict(importance=("taylor",), ratios=(0.3, 0.5, 0.7), variants=("pruned", "svs", "random"),
                     maps=("sqrt",), steps=800, eval_every=200),
}


def run_id(importance: str, ratio: float, variant: str, map: str, steps: int, seed: int) -> str:
    """The file name of one run; the map appears only where it is used and is not sqrt."""
    tag = f"-{map.replace(':', '')}" if variant.startswith("svs") and map != "sqrt" else ""
    return f"{importance}-r{ratio}-{variant}{tag}-{steps}steps-s{seed}"


def jobs(plan: dict, seeds, variant_override=None):
    variants = (variant_override,) if variant_override else plan["variants"]
    for importance, ratio, seed, variant, map in itertools.product(
            plan["importance"], plan["ratios"], seeds, variants, plan["maps"]):
        if map != "sqrt" and not variant.startswith("svs"):
            continue
        yield dict(importance=importance, ratio=ratio, variant=variant, map=map, seed=seed)


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    from svs.io import atomic_write
    from svs.experiments.pipelines import Evaluator, TrainConfig, digits, load_model, student, train_ddpm

    torch.set_num_threads(args.threads)
    plan = PLANS[args.plan]
    todo = [j for k, j in enumerate(jobs(plan, args.seeds, args.variant)) if k % args.shards == args.shard]
    images, _ = digits()
    teacher = load_model(args.teacher)
    evaluate = Evaluator(teacher, n=args.eval_samples, ddim_steps=args.ddim_steps)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    teacher_eval = evaluate(teacher, 0)
    print("teacher", teacher_eval, flush=True)
    for job in todo:
        name = run_id(steps=plan["steps"], **job)
        path = out / "runs" / f"{name}.json"
        if path.exists():  # checked at the last moment: another shard or a migration may have written it
            continue
        start = time.time()
        model = student(teacher, job["ratio"], job["variant"], importance=job["importance"], seed=job["seed"],
                        images=images, map=job["map"])
        params = sum(p.numel() for p in model.parameters())
        cfg = TrainConfig(steps=plan["steps"], batch_size=args.batch_size, lr=args.lr, seed=job["seed"], log_every=25)
        history = train_ddpm(model, images, cfg, eval_fn=evaluate, eval_every=plan["eval_every"], progress=False)
        result = {**job, "steps": plan["steps"], "params": params,
                  "teacher_params": sum(p.numel() for p in teacher.parameters()),
                  "teacher_eval": teacher_eval,
                  "config": {"plan": args.plan, "eval_every": plan["eval_every"], "batch_size": args.batch_size,
                             "lr": args.lr, "eval_samples": args.eval_samples, "ddim_steps": args.ddim_steps,
                             "threads": args.threads, "teacher": args.teacher},
                  "seconds": round(time.time() - start, 1), **history}
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
        last = history["eval"][-1]
        print(f"{name}: FID {last['fid']:.2f} SSIM {last['ssim']:.3f} ({result['seconds']} s)", flush=True)


LABELS = {"pruned": "pruned", "reset": "pruned + GN reset", "svs-keepnorm": "pruned + SVS (GN kept)",
          "svs": "pruned + SVS + GN reset (authors')", "random": "random init"}
COLORS = {"pruned": "C0", "reset": "C1", "svs-keepnorm": "C2", "svs": "C3", "random": "C4"}  # one per variant in every figure
BEGIN, END = "<!-- tables: scripts/svs_experiment.py report -->", "<!-- end of tables -->"


def _ms(values, digits=2) -> str:
    """mean +- sample std (n - 1), or the value alone for one run."""
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.{digits}f} +- {a.std(ddof=1):.{digits}f}" if len(a) > 1 else f"{a.mean():.{digits}f}"


def _fid_at(run: dict, step: int) -> float:
    return next(e["fid"] for e in run["eval"] if e["step"] == step)


def _select(runs, **want):
    return sorted((r for r in runs if all(r.get(k) == v for k, v in want.items())), key=lambda r: r["seed"])


def _paired(rows, base) -> str:
    """FID at the end of each run in ``rows`` minus that of the same seed's run in ``base`` (same
    pruned weights, same data order)."""
    other = {r["seed"]: r["eval"][-1]["fid"] for r in base}
    diffs = [r["eval"][-1]["fid"] - other[r["seed"]] for r in rows if r["seed"] in other]
    return _ms(diffs) if diffs else "-"


def report(args: argparse.Namespace) -> None:
    """Tables and figures of every run in OUT/runs: results.md's table section is rewritten, the
    text around it is kept; the figures are redrawn, the same bytes for the same runs
    (svs.plots.save_figure)."""
    from svs.plots import pyplot, save_figure

    out = Path(args.out)
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    if not runs:
        raise SystemExit(f"no runs in {out / 'runs'}")
    for r in runs:  # runs of the first experiment predate these fields
        r.setdefault("importance", "taylor"), r.setdefault("map", "sqrt"), r.setdefault("steps", 800)
    teacher = runs[0]["teacher_eval"]
    cfg = runs[0]["config"]
    plt = pyplot()
    lines = [BEGIN, "",
             f"Teacher: FID {teacher['fid']:.2f}, confidence {teacher['confidence']:.3f}. Every run: batch "
             f"{cfg['batch_size']}, lr {cfg['lr']}, EMA; FID on {cfg['eval_samples']} DDIM-{cfg['ddim_steps']} "
             "samples from one fixed noise (bundled classifier's features, lower is better), SSIM to the "
             "teacher's samples from the same noise (higher is better). mean +- std over seeds; "
             "\"paired\" differences subtract the same seed's plain pruned run (same pruned weights, same "
             "data order), which removes most of the seed-to-seed spread.", ""]

    # 1. the ablation: criterion x sparsity x variant at 800 steps
    short = [r for r in runs if r["steps"] == 800 and r["map"] == "sqrt"]
    lines += ["## 1. SVS and the GroupNorm reset, separated (800 steps)", "",
              "| criterion | sparsity | variant | seeds | FID at end | paired vs pruned | FID at 200 steps | SSIM at end | confidence |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    cells = sorted({(r["importance"], r["ratio"]) for r in short}, key=lambda c: (c[0] != "taylor", c[0], c[1]))
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 3.6), dpi=110, squeeze=False)
    for ax, (imp, ratio) in zip(axes[0], cells):
        for variant in ABLATION:
            rs = _select(short, importance=imp, ratio=ratio, variant=variant)
            if not rs:
                continue
            lines.append(f"| {imp} | {ratio:.0%} | {LABELS[variant]} | {len(rs)} | {_ms([r['eval'][-1]['fid'] for r in rs])} | "
                         f"{_paired(rs, _select(short, importance=imp, ratio=ratio, variant='pruned')) if variant != 'pruned' else ''} | "
                         f"{_ms([_fid_at(r, 200) for r in rs])} | {_ms([r['eval'][-1]['ssim'] for r in rs], 3)} | "
                         f"{_ms([r['eval'][-1]['confidence'] for r in rs], 3)} |")
            fids = np.array([[e["fid"] for e in r["eval"]] for r in rs])
            ax.errorbar([e["step"] for e in rs[0]["eval"]], fids.mean(0), yerr=fids.std(0), label=LABELS[variant],
                        color=COLORS[variant], capsize=2)
        ax.axhline(teacher["fid"], color="gray", linestyle=":", label="teacher")
        ax.set(yscale="log", title=f"{imp}, sparsity {ratio:.0%}", xlabel="fine-tuning step", ylabel="FID")
    max(axes[0], key=lambda a: len(a.lines)).legend(fontsize=7)  # the panel with every variant
    fig.tight_layout()
    save_figure(fig, out / "fid_vs_steps.png")
    plt.close(fig)
    lines += ["", "FID along fine-tuning: `fid_vs_steps.png`.", ""]

    # 2. the longer budget
    long = [r for r in runs if r["steps"] > 800]
    if long:
        steps = [e["step"] for e in long[0]["eval"]]
        shown = [st for st in steps if st in (800, steps[-1] // 2, steps[-1])]
        lines += [f"## 2. A longer budget ({steps[-1]} steps, taylor, 50 %)", "",
                  "| variant | seeds | " + " | ".join(f"FID at {st}" for st in shown) + " | paired vs pruned at end |",
                  "|---|---:|" + "---:|" * (len(shown) + 1)]
        fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
        for variant in ABLATION:
            rs = _select(long, variant=variant)
            if rs:
                lines.append(f"| {LABELS[variant]} | {len(rs)} | " + " | ".join(_ms([_fid_at(r, st) for r in rs]) for st in shown)
                             + f" | {_paired(rs, _select(long, variant='pruned')) if variant != 'pruned' else ''} |")
                fids = np.array([[e["fid"] for e in r["eval"]] for r in rs])
                ax.errorbar(steps, fids.mean(0), yerr=fids.std(0), label=LABELS[variant], color=COLORS[variant], capsize=2)
        ax.axhline(teacher["fid"], color="gray", linestyle=":", label="teacher")
        ax.set(yscale="log", xlabel="fine-tuning step", ylabel="FID", title=f"taylor, sparsity 50 %, {steps[-1]} steps")
        ax.legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, out / "fid_long.png")
        plt.close(fig)
        lines += ["", "Curves: `fid_long.png`.", ""]

    # 3. the maps
    maps = [r for r in runs if r["steps"] == 800 and r["importance"] == "taylor" and r["ratio"] == 0.5
            and r["variant"].startswith("svs")]
    mapped = sorted({(r["variant"], r["map"]) for r in maps if r["map"] != "sqrt"})
    if mapped:
        variant = mapped[0][0]
        lines += [f"## 3. The map f (taylor, 50 %, {LABELS[variant]}, 800 steps)", "",
                  "| map | seeds | FID at end | paired vs pruned | FID at 200 steps | SSIM at end |", "|---|---:|---:|---:|---:|---:|"]
        for m in PLANS["maps"]["maps"]:
            rs = _select(maps, variant=variant, map=m)
            if rs:
                lines.append(f"| {m} | {len(rs)} | {_ms([r['eval'][-1]['fid'] for r in rs])} | {_paired(rs, _select(short, importance='taylor', ratio=0.5, variant='pruned'))} | "
                             f"{_ms([_fid_at(r, 200) for r in rs])} | {_ms([r['eval'][-1]['ssim'] for r in rs], 3)} |")
        lines.append("")

    # 4. the spectra
    lines += ["## 4. The spectra of the pruned weights", "", *spectra_table(cells, out), ""]
    lines.append(END)
    path = out / "results.md"
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + "\n".join(lines) + text[text.index(END) + len(END):]
    else:
        text = text + "\n".join(lines) + "\n"
    path.write_text(text)
    print("\n".join(lines))


def spectra_table(cells, out: Path) -> list:
    """Per (criterion, sparsity): over the weights SVS touches, the condition number s_max / s_min
    (over the numerical rank) and the top singular value's share of the squared Frobenius norm,
    before and after SVS (sqrt), next to the teacher's; plus the histogram figure of each cell.
    The spectra are the operator's own (svs.refine_with_spectra: zero below the rank tolerance)."""
    from svs import map_spectrum, refine_with_spectra, select
    from svs.experiments.pipelines import digits, load_teacher, student
    from svs.plots import plot_spectra
    from svs.presets import Role

    def spectra(model):
        roles = select(dict(model.named_parameters()), "ddpm")
        weights = [model.get_parameter(n).detach() for n, r in roles.items() if r is Role.WEIGHT]
        return refine_with_spectra(weights)[2]

    def stats(values):
        kappa = [float(s[0] / s[s > 0][-1]) for s in values]
        share = [float(s[0] ** 2 / (s ** 2).sum()) for s in values]
        return (f"{np.median(kappa):.3g} [{np.percentile(kappa, 10):.3g}, {np.percentile(kappa, 90):.3g}]",
                f"{np.median(share):.3f} [{np.percentile(share, 10):.3f}, {np.percentile(share, 90):.3f}]")

    teacher, images = load_teacher(), digits()[0]
    rows = ["Median and [10th, 90th percentile] over the weights SVS refines; kappa = s_max / s_min over "
            "the singular values above the rank tolerance; share = s_1^2 / sum s_i^2 (how dominant the "
            "top singular value is). After SVS the spectrum is sqrt(s).", "",
            "| model | weights | kappa | share of s_1 | kappa after SVS | share after SVS |", "|---|---:|---:|---:|---:|---:|"]
    base = spectra(teacher)
    rows.append(f"| teacher | {len(base)} | {' | '.join(stats(base))} | {' | '.join(stats([map_spectrum(s) for s in base]))} |")
    for imp, ratio in cells:
        before = spectra(student(teacher, ratio, "pruned", importance=imp, seed=0, images=images))
        after = [map_spectrum(s) for s in before]
        rows.append(f"| {imp} {ratio:.0%} (seed 0) | {len(before)} | {' | '.join(stats(before))} | {' | '.join(stats(after))} |")
        plot_spectra({"pruned": before, "pruned + SVS": after}, str(out / f"spectrum_{imp}_p{round(ratio * 100)}.png"),
                     title=f"digits teacher, {imp} {ratio:.0%}: {len(before)} weights")
    rows += ["", "Histograms: " + ", ".join(f"`spectrum_{imp}_p{round(r * 100)}.png`" for imp, r in cells) + "."]
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--teacher", default="teacher")
    r.add_argument("--plan", required=True, choices=sorted(PLANS))
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--variant", default=None, choices=ABLATION, help="run only this variant of the plan")
    r.add_argument("--shard", type=int, default=0, help="this process takes every --shards-th run from --shard")
    r.add_argument("--shards", type=int, default=1)
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--lr", type=float, default=2e-4)
    r.add_argument("--eval-samples", type=int, default=512)
    r.add_argument("--ddim-steps", type=int, default=25)
    r.add_argument("--threads", type=int, default=1)
    r.set_defaults(func=run)
    rep = sub.add_parser("report")
    rep.set_defaults(func=report)
    for q in (r, rep):
        q.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
