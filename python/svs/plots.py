"""Figures: the spectrum histogram (the paper's Figure 1(b)) and image grids. They need the
optional ``plot`` extra (matplotlib); without it each raises :class:`svs.extras.MissingExtra`.

Every figure is saved by :func:`save_figure`, byte for byte the same for the same data in PNG, PDF
and SVG (docs/results tracks some): no date, no matplotlib version, fixed SVG ids."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import torch

from .extras import require


def pyplot():
    """matplotlib.pyplot with the file-only Agg backend, or MissingExtra naming the ``plot`` extra."""
    require("plot", "plotting")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Per format, the metadata that would change the bytes of an unchanged figure (savefig's metadata=:
# None drops an entry): the matplotlib version everywhere, the date in PDF and SVG. The formats the
# help names (PNG, PDF, SVG) are byte-stable; PostScript writes its date and file name regardless.
STABLE_METADATA = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
                   "svg": {"Creator": None, "Date": None}}


@contextlib.contextmanager
def stable_options(path):
    """savefig's / imsave's ``format`` (from the suffix; PNG without one) and ``metadata`` for
    ``path``, under a fixed SVG id salt: the same figure gives the same bytes."""
    import matplotlib

    fmt = Path(path).suffix[1:].lower() or "png"
    with matplotlib.rc_context({"svg.hashsalt": "svs"}):
        yield {"format": fmt, "metadata": STABLE_METADATA.get(fmt)}


def save_figure(fig, path) -> None:
    """``fig.savefig(path)``, byte-stable (:func:`stable_options`)."""
    with stable_options(path) as options:
        fig.savefig(path, **options)


def check_image_path(path: Path) -> None:
    """Raises ValueError for an image path whose suffix matplotlib cannot write (before any work)."""
    pyplot()
    from matplotlib.backend_bases import FigureCanvasBase

    if path.suffix[1:].lower() not in FigureCanvasBase.get_supported_filetypes():
        raise ValueError(f"{path}: unknown image type {path.suffix or '(no suffix)'}; use .png, .pdf or .svg")


def plot_spectra(
    spectra: Dict[str, Sequence[torch.Tensor]],
    path: str,
    title: str = "Singular values of the selected weights",
) -> None:
    """Distribution of all singular values (log-spaced bins, fraction per bin), one curve per entry of ``spectra``,
    e.g. ``{"pruned": before, "pruned + SVS": after}``: the paper's Figure 1(b)."""
    plt = pyplot()

    values = {k: torch.cat([s.flatten() for s in v]).numpy() for k, v in spectra.items()}
    positive = np.concatenate([v[v > 0] for v in values.values()])
    # Bin edges on a grid of 1/20 decade, so that a spectrum that differs in its last bits (another
    # BLAS, thread count or machine) draws the same curves: the figure depends on the counts only.
    lo, hi = np.floor(np.log10(positive.min()) * 20) / 20, np.ceil(np.log10(positive.max()) * 20) / 20
    bins = np.logspace(lo, max(hi, lo + 0.05), 60)
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
    save_figure(fig, path)
    plt.close(fig)


def save_image_grid(images: torch.Tensor, path, nrow: int = 8, scale: int = 4) -> None:
    """Saves images in [-1, 1] of shape (n, 1, h, w) as one PNG grid (matplotlib, no torchvision),
    each pixel drawn as a ``scale`` x ``scale`` block so small digits stay visible."""
    plt = pyplot()

    n, _, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    grid = torch.ones(rows * (h + 1) + 1, nrow * (w + 1) + 1)
    for i, img in enumerate(images[:, 0]):
        r, c = divmod(i, nrow)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = (img + 1) / 2
    grid = grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    with stable_options(path) as options:
        plt.imsave(str(path), grid.clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1, **options)
