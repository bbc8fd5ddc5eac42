"""Singular value statistics of many matrices, batched by shape, and the spectrum plot."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .interrupt import compute


# Work (m * n * min(m, n) of each matrix) per batched decomposition call: about 0.3 s on two CPU
# cores. Batches are cut at this size so that Ctrl-C and a progress bar land between calls; bigger
# batches gain nothing, as batching only pays for matrices far smaller than this.
MAX_WORK = 2**32


def batches(shapes: Sequence[Sequence[int]], max_work: int = MAX_WORK) -> List[List[int]]:
    """Indices of ``shapes`` in batches of one shape (flattened to ``(shape[0], -1)``), each with at
    most ``max_work`` work, or a single matrix."""
    groups: Dict[tuple, List[int]] = defaultdict(list)
    for i, shape in enumerate(shapes):
        rows = shape[0]
        groups[(rows, math.prod(shape) // max(rows, 1))].append(i)
    out: List[List[int]] = []
    for (rows, cols), idx in groups.items():
        size = max(1, max_work // max(1, rows * cols * min(rows, cols)))
        out += [idx[k:k + size] for k in range(0, len(idx), size)]
    return out


def singular_values(tensors: Sequence[torch.Tensor], on_batch: Optional[Callable[[int], None]] = None) -> List[torch.Tensor]:
    """Singular values (descending, float64, on the CPU) of each tensor flattened to (shape[0], -1);
    one batched ``svdvals`` per batch of :func:`batches`, on the tensors' device. ``on_batch(n)``
    is called after each batch of ``n`` matrices (a progress bar)."""
    out: List[Optional[torch.Tensor]] = [None] * len(tensors)
    with torch.no_grad():
        for idx in batches([t.shape for t in tensors]):
            rows = tensors[idx[0]].shape[0]
            batch = torch.stack([tensors[i].detach().reshape(rows, -1).to(torch.float64) for i in idx])
            for i, s in zip(idx, compute(lambda: torch.linalg.svdvals(batch).cpu())):
                out[i] = s
            if on_batch is not None:
                on_batch(len(idx))
    return out  # type: ignore[return-value]


def plot_spectra(
    spectra: Dict[str, Sequence[torch.Tensor]],
    path: str,
    title: str = "Singular values of the selected weights",
) -> None:
    """Distribution of all singular values (log-spaced bins, fraction per bin), one curve per entry of ``spectra``,
    e.g. ``{"pruned": before, "pruned + SVS": after}``: the paper's Figure 1(b)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = {k: torch.cat([s.flatten() for s in v]).numpy() for k, v in spectra.items()}
    positive = np.concatenate([v[v > 0] for v in values.values()])
    bins = np.logspace(np.log10(positive.min()), np.log10(positive.max()), 60)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for label, v in values.items():
        kept = v[v > 0]
        weights = np.full(len(kept), 1.0 / max(len(v), 1))  # share of all values, zeros included
        ax.hist(kept, bins=bins, weights=weights, histtype="step", linewidth=1.6, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("singular value")
    ax.set_ylabel("fraction of singular values")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def describe(s: torch.Tensor) -> Dict[str, float]:
    """Max, min, condition number and the share of the spectrum's energy in its top 10 %."""
    s_max, s_min = float(s[0]), float(s[-1])
    top = max(1, len(s) // 10)
    energy = float((s[:top] ** 2).sum() / (s**2).sum()) if s_max > 0 else 0.0
    return {
        "s_max": s_max,
        "s_min": s_min,
        "kappa": s_max / s_min if s_min > 0 else float("inf"),
        "top10_energy": energy,
    }



def save_image_grid(images: torch.Tensor, path, nrow: int = 8, scale: int = 4) -> None:
    """Saves images in [-1, 1] of shape (n, 1, h, w) as one PNG grid (matplotlib, no torchvision),
    each pixel drawn as a ``scale`` x ``scale`` block so small digits stay visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, _, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    grid = torch.ones(rows * (h + 1) + 1, nrow * (w + 1) + 1)
    for i, img in enumerate(images[:, 0]):
        r, c = divmod(i, nrow)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = (img + 1) / 2
    grid = grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    plt.imsave(str(path), grid.clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
