"""Trains the bundled teacher: a small DDPM UNet on scikit-learn's digits (16x16), on the CPU.

    .venv/bin/python scripts/train_teacher.py --steps 9000 --batch-size 64 --lr 3e-4 --seed 0

Writes python/svs/experiments/assets/digits_teacher.safetensors (EMA weights), digits_teacher.json (config,
command, loss history) and docs/results/teacher_samples.png. Resumable: rerunning the same command
continues from .cache/teacher.ckpt.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=9000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from safetensors.torch import save_file

    from svs.io import atomic_write
    from svs.experiments.pipelines import TEACHER_CONFIG, TrainConfig, build_teacher, digits, sample_ddim
    from svs.plots import save_image_grid

    torch.manual_seed(args.seed)
    images, _ = digits()
    model = build_teacher(args.seed)
    start = time.time()
    ckpt = ROOT / ".cache" / "teacher.ckpt"
    ckpt.parent.mkdir(exist_ok=True)
    from svs.experiments.pipelines import train_ddpm

    history = train_ddpm(model, images, TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                                    seed=args.seed, log_every=100, checkpoint_every=250),
                         checkpoint=ckpt)
    assets = ROOT / "python" / "svs" / "experiments" / "assets"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(assets / "digits_teacher.safetensors", lambda tmp: save_file(state, tmp))
    meta = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in TEACHER_CONFIG.items()},
            "command": " ".join([".venv/bin/python", "scripts/train_teacher.py"] + sys.argv[1:]),
            "train_seconds_this_run": round(time.time() - start, 1), "torch": torch.__version__,
            "history": history}
    atomic_write(assets / "digits_teacher.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))
    save_image_grid(sample_ddim(model, 64, steps=50, seed=1), ROOT / "docs" / "results" / "teacher_samples.png")
    print("done", time.time() - start)


if __name__ == "__main__":
    main()
