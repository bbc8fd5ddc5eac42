"""Trains the digit classifier whose features ``svs.experiments.metrics`` uses for FID and recognisability.

    .venv/bin/python scripts/train_classifier.py --epochs 40 --seed 0

A stratified 20% of scikit-learn's digits (``svs.experiments.metrics.digits_split``, same seed) is held out
for the test accuracy. Augmentation: each training image is shifted by a random -1/0/+1 pixel in
x and y (background -1 filled in). One CPU thread, well under 2 minutes. Writes
python/svs/experiments/assets/digits_classifier.safetensors and digits_classifier.json.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-image translation by (dy, dx) in {-1, 0, 1}^2, padding with the background value -1."""
    n, _, h, w = x.shape
    dy = torch.randint(-1, 2, (n,), generator=gen)
    dx = torch.randint(-1, 2, (n,), generator=gen)
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    rows = (torch.arange(h)[None, :] + 1 + dy[:, None])[:, :, None]
    cols = (torch.arange(w)[None, :] + 1 + dx[:, None])[:, None, :]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).double().mean())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)

    from safetensors.torch import save_file

    from svs.io import atomic_write
    from svs.experiments.metrics import DigitClassifier, digits_split
    from svs.experiments.data import digits

    start = time.time()
    images, labels = digits()
    train_idx, test_idx = digits_split(labels, test_fraction=0.2, seed=args.seed)
    xtr, ytr, xte, yte = images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = -(-len(xtr) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        total = 0.0
        for i in range(0, len(xtr), args.batch_size):
            idx = perm[i:i + args.batch_size]
            loss = F.cross_entropy(model(random_shift(xtr[idx], gen)), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 10 == 0 or epoch == args.epochs - 1:
            print(f"epoch {epoch + 1}: loss {total / len(xtr):.4f}  test acc {accuracy(model, xte, yte):.4f}",
                  flush=True)

    test_acc = accuracy(model, xte, yte)
    train_acc = accuracy(model, xtr, ytr)
    assets = ROOT / "python" / "svs" / "experiments" / "assets"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(assets / "digits_classifier.safetensors", lambda tmp: save_file(state, tmp))
    meta = {
        "command": " ".join([".venv/bin/python", "scripts/train_classifier.py"] + sys.argv[1:]),
        "seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "split": {"function": "svs.experiments.metrics.digits_split", "test_fraction": 0.2, "seed": args.seed,
                  "train": len(train_idx), "test": len(test_idx)},
        "augmentation": "random shift by -1/0/+1 px in x and y, background -1",
        "test_accuracy": round(test_acc, 4), "train_accuracy": round(train_acc, 4),
        "train_seconds": round(time.time() - start, 1), "torch_threads": 1, "torch": torch.__version__,
    }
    atomic_write(assets / "digits_classifier.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1) + "\n"))
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
