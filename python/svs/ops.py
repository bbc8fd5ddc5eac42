"""Typed Python entry points of the ``torch.ops.svs`` operators."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

import svs_kernels  # noqa: F401  (registers torch.ops.svs.*)

MAPS = ("sqrt", "log1p", "abslog", "power:<p>", "ones", "spectral", "square", "identity")


def refine(
    weights: Sequence[torch.Tensor],
    biases: Optional[Sequence[Optional[torch.Tensor]]] = None,
    *,
    map: str = "sqrt",
    eps: float = 1e-8,
    method: str = "auto",
) -> Tuple[List[torch.Tensor], List[Optional[torch.Tensor]]]:
    """Singular Value Scaling of many weights in one call; the inputs are not modified.

    Each weight ``W`` (any ``ndim >= 2``, flattened to ``(W.shape[0], -1)``) becomes
    ``U f(S) V^T`` with ``f`` given by ``map``; each bias ``b`` becomes ``b / sqrt(||b|| + eps)``.
    Singular values below the numerical-rank tolerance ``max(m, n) * eps(compute dtype) * s_max``
    are treated as zero by every map, so the rank of ``W`` is kept.

    Args:
        weights: float16/bfloat16/float32/float64 tensors on one device, any mix of shapes.
        biases: one bias (1-D, ``W.shape[0]`` elements) or ``None`` per weight; default all ``None``.
        map: ``sqrt`` (the paper's), ``log1p``, ``abslog``, ``power:<p>``, ``ones``, ``spectral``,
            ``square`` or ``identity``.
        eps: added to ``||b||`` in the bias rule.
        method: decomposition route; ``auto`` picks one per matrix. CPU: ``auto``, ``gram``, ``svd``;
            CUDA: ``auto``, ``jacobi``, ``gram``, ``svd`` (see csrc/cuda/planner.h).

    Returns:
        ``(new_weights, new_biases)`` in the input shapes and dtypes.
    """
    weights = list(weights)
    biases = [None] * len(weights) if biases is None else list(biases)
    with torch.no_grad():
        return torch.ops.svs.refine(weights, biases, map, eps, method)


def refine_(
    weights: Sequence[torch.Tensor],
    biases: Optional[Sequence[Optional[torch.Tensor]]] = None,
    *,
    map: str = "sqrt",
    eps: float = 1e-8,
    method: str = "auto",
) -> None:
    """In-place :func:`refine`, one shape group at a time so it needs little extra memory.

    Every input is validated before the first write. For all-or-nothing semantics on a model use
    :func:`svs.refine_model`, which uses the functional operator.
    """
    weights = list(weights)
    biases = [None] * len(weights) if biases is None else list(biases)
    with torch.no_grad():
        torch.ops.svs.refine_(weights, biases, map, eps, method)
