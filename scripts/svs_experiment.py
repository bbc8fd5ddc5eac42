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
import os
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
    from svs.pipelines import Evaluator, TrainConfig, digits, load_model, student, train_ddpm

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


def report(args: argparse.Namespace) -> None:
    OUT = Path(args.out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(p.read_text()) for p in sorted((OUT / "runs").glob("*.json"))]
    if not runs:
        raise SystemExit("no runs yet")
    ratios = sorted({r["ratio"] for r in runs})
    teacher = runs[0]["teacher_eval"]
    cfg = runs[0]["config"]
    lines = [
        "# SVS on the bundled digits DDPM: pruned vs pruned + SVS vs random init",
        "",
        f"Teacher: FID {teacher['fid']:.2f}, confidence {teacher['confidence']:.3f}. Fine-tuning: "
        f"{cfg['steps']} steps, batch {cfg['batch_size']}, lr {cfg['lr']}, EMA; {cfg['importance']} pruning; "
        f"evaluation on {cfg['eval_samples']} DDIM-{cfg['ddim_steps']} samples from one fixed noise. "
        "mean +- std over seeds; FID lower is better, SSIM (to the teacher's samples from the same "
        "noise) higher is better.",
        "",
        "| sparsity | variant | params | seeds | FID at end | FID at 25 % of steps | SSIM at end | confidence at end | loss at end |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def stat(values):
        a = np.asarray(values, dtype=float)
        return f"{a.mean():.2f} +- {a.std(ddof=1) if len(a) > 1 else 0:.2f}"

    def stat3(values):
        a = np.asarray(values, dtype=float)
        return f"{a.mean():.3f} +- {a.std(ddof=1) if len(a) > 1 else 0:.3f}"

    fig, axes = plt.subplots(1, len(ratios), figsize=(4.2 * len(ratios), 3.4), dpi=120, squeeze=False)
    for ax, ratio in zip(axes[0], ratios):
        for variant in VARIANTS:
            rs = [r for r in runs if r["ratio"] == ratio and r["variant"] == variant]
            if not rs:
                continue
            quarter = [next(e for e in r["eval"] if e["step"] >= cfg["steps"] // 4)["fid"] for r in rs]
            lines.append(
                f"| {ratio:.0%} | {variant} | {rs[0]['params']:,} | {len(rs)} | {stat([r['eval'][-1]['fid'] for r in rs])} | "
                f"{stat(quarter)} | {stat3([r['eval'][-1]['ssim'] for r in rs])} | "
                f"{stat3([r['eval'][-1]['confidence'] for r in rs])} | {stat3([r['loss'][-1]['loss'] if r['loss'] else float('nan') for r in rs])} |")
            steps = [e["step"] for e in rs[0]["eval"]]
            fids = np.array([[e["fid"] for e in r["eval"]] for r in rs])
            ax.errorbar(steps, fids.mean(0), yerr=fids.std(0), label=variant, capsize=2)
        ax.axhline(teacher["fid"], color="gray", linestyle=":", label="teacher")
        ax.set_yscale("log")
        ax.set_title(f"sparsity {ratio:.0%}")
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("FID (classifier features)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "fid_vs_steps.png")
    spectra_plots(ratios, cfg["importance"], OUT)
    lines += ["", "Singular values before/after SVS (the paper's Figure 1(b)): "
              + ", ".join(f"`spectrum_p{round(r * 100)}.png`" for r in ratios) + "; FID along fine-tuning: `fid_vs_steps.png`."]
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def spectra_plots(ratios, importance: str, out: Path) -> None:
    """Singular values of the pruned teacher's weights before and after SVS, per sparsity."""
    import copy

    from svs import refine_model
    from svs.pipelines import digits, load_teacher, student
    from svs.spectrum import plot_spectra, singular_values

    teacher, images = load_teacher(), digits()[0]
    for ratio in ratios:
        pruned = student(teacher, ratio, "pruned", importance=importance, seed=0, images=images)
        refined = copy.deepcopy(pruned)
        names = [r.name for r in refine_model(refined, preset="ddpm", stats=False).weights]
        before = singular_values([dict(pruned.named_parameters())[n] for n in names])
        after = singular_values([dict(refined.named_parameters())[n] for n in names])
        plot_spectra({"pruned": before, "pruned + SVS": after}, str(out / f"spectrum_p{round(ratio * 100)}.png"),
                     title=f"digits teacher pruned {ratio:.0%}: {len(names)} weights")


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
