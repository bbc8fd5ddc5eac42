"""Singular value statistics of many matrices, batched by shape."""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .interrupt import compute


# Work (m * n * min(m, n) of each matrix) per batched decomposition call: about 0.3 s on two CPU
# cores. Batches are cut at this size so that Ctrl-C and a progress bar land between calls; bigger
# batches gain nothing, as batching only pays for matrices far smaller than this.
MAX_WORK = 2**32


def group_by_shape(shapes: Sequence[Sequence[int]]) -> Dict[Tuple[int, int], List[int]]:
    """Indices of ``shapes`` per ``(rows, cols)`` of their ``(shape[0], -1)`` flattening, in
    first-seen order: the matrices one batched decomposition can take together."""
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, shape in enumerate(shapes):
        rows = shape[0]
        groups.setdefault((rows, math.prod(shape) // max(rows, 1)), []).append(i)
    return groups


def batches(shapes: Sequence[Sequence[int]], max_work: int = MAX_WORK) -> List[List[int]]:
    """Indices of ``shapes`` in batches of one shape (:func:`group_by_shape`), each with at most
    ``max_work`` work, or a single matrix."""
    out: List[List[int]] = []
    for (rows, cols), idx in group_by_shape(shapes).items():
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

