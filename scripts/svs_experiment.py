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
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "results" / "svs_experiment"
VARIANTS = ("pruned", "svs", "random")


def run(args: argparse.Namespace) -> None:
    OUT = Path(args.out)
    from svs.pipelines import Evaluator, TrainConfig, digits, load_model, student, train_ddpm

    torch.set_num_threads(args.threads)
    images, _ = digits()
    teacher = load_model(args.teacher)
    evaluate = Evaluator(teacher, n=args.eval_samples, ddim_steps=args.ddim_steps)
    (OUT / "runs").mkdir(parents=True, exist_ok=True)
    teacher_eval = evaluate(teacher, 0)
    print("teacher", teacher_eval, flush=True)
    for ratio in args.ratios:
        for seed in args.seeds:
            for variant in VARIANTS:
                path = OUT / "runs" / f"r{ratio}-{variant}-s{seed}.json"
                if path.exists():
                    continue
                start = time.time()
                model = student(teacher, ratio, variant, importance=args.importance, seed=seed, images=images)
                params = sum(p.numel() for p in model.parameters())
                cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=seed, log_every=25)
                history = train_ddpm(model, images, cfg, eval_fn=evaluate, eval_every=args.eval_every, progress=False)
                result = {"ratio": ratio, "variant": variant, "seed": seed, "params": params,
                          "teacher_params": sum(p.numel() for p in teacher.parameters()),
                          "teacher_eval": teacher_eval, "config": {k: v for k, v in vars(args).items() if k != "func"},
                          "seconds": round(time.time() - start, 1), **history}
                path.write_text(json.dumps(result, indent=1))
                last = history["eval"][-1]
                print(f"r={ratio} {variant:6s} seed={seed}: FID {last['fid']:.2f} SSIM {last['ssim']:.3f} "
                      f"({result['seconds']} s)", flush=True)


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
    r.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--importance", default="taylor", choices=["taylor", "magnitude"])
    r.add_argument("--steps", type=int, default=600)
    r.add_argument("--eval-every", type=int, default=150)
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
