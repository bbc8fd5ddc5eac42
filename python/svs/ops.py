"""Typed Python entry points of the ``torch.ops.svs`` operators."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch

import svs_kernels  # noqa: F401  (registers torch.ops.svs.*)

from .options import DEFAULT_CERTIFY, DEFAULT_EPS, DEFAULT_MAP, DEFAULT_METHOD

# The names map= takes ("power:<p>": "power:" and a finite number), as the extension defines them.
MAPS: Tuple[str, ...] = tuple(torch.ops.svs._map_names())


def check_args(weights, biases, map, eps) -> Tuple[List[torch.Tensor], List[Optional[torch.Tensor]]]:
    """``(weights, biases)`` as lists, after the checks the operator cannot make: Python objects
    that are not lists of tensors (``TypeError``), and ``map`` / ``eps`` as Python values
    (``ValueError``, naming every map). The tensors themselves (count, dtype, shape, device,
    NaN/Inf) and ``method`` are checked by the operator (csrc/refine_common.cpp ``check_inputs``),
    which raises ``TypeError`` / ``ValueError`` itself, ``RuntimeError`` for NaN/Inf."""
    weights = _tensor_list(weights, "weights", none_ok=False)
    biases = [None] * len(weights) if biases is None else _tensor_list(biases, "biases", none_ok=True)
    if not _is_map(map):
        raise ValueError(f"unknown map {map!r}; expected one of {', '.join(MAPS)} (e.g. power:0.25)")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return weights, biases


def _is_map(map) -> bool:
    """Whether the operator accepts ``map`` (the extension's parser decides)."""
    if not isinstance(map, str):
        return False
    try:
        torch.ops.svs._parse_map(map)
    except ValueError:
        return False
    return True


def _tensor_list(items, what: str, none_ok: bool) -> list:
    kind = "tensors (or None)" if none_ok else "tensors"
    if isinstance(items, torch.Tensor):
        raise TypeError(f"{what} must be a list of {kind}, got a single tensor; pass [tensor]")
    if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
        raise TypeError(f"{what} must be a list of {kind}, got {type(items).__name__}")
    items = list(items)
    for i, t in enumerate(items):
        if not (isinstance(t, torch.Tensor) or (none_ok and t is None)):
            raise TypeError(f"{what}[{i}] must be a tensor{' or None' if none_ok else ''}, got {type(t).__name__}")
    return items


def refine(
    weights: Sequence[torch.Tensor],
    biases: Optional[Sequence[Optional[torch.Tensor]]] = None,
    *,
    map: str = DEFAULT_MAP,
    eps: float = DEFAULT_EPS,
    method: str = DEFAULT_METHOD,
    certify: bool = DEFAULT_CERTIFY,
) -> Tuple[List[torch.Tensor], List[Optional[torch.Tensor]]]:
    """Singular Value Scaling of many weights in one call; the inputs are not modified.

    Each weight ``W`` (any ``ndim >= 2``, flattened to ``(W.shape[0], -1)``) becomes
    ``U f(S) V^T`` with ``f`` given by ``map``; each bias ``b`` becomes ``b / sqrt(||b|| + eps)``.
    Singular values below the numerical-rank tolerance (``s_max`` times the decomposition's
    relative rounding error; csrc/constants.h) are treated as zero by every map, so the rank of
    ``W`` is kept.

    Args:
        weights: float16/bfloat16/float32/float64 tensors on one device, any mix of shapes.
        biases: one bias (1-D, ``W.shape[0]`` elements) or ``None`` per weight; default all ``None``.
        map: ``sqrt`` (the paper's), ``log1p``, ``abslog``, ``power:<p>``, ``ones``, ``spectral``,
            ``square`` or ``identity``.
        eps: added to ``||b||`` in the bias rule.
        method: decomposition route; ``auto`` picks one per matrix. :func:`method_names` lists
            a device's; ``aten`` runs the CPU kernel's float64 ATen route on any device (on CUDA:
            the exact fallback).
        certify: test every result against its weight before returning it (cheap: a few
            matrix-vector products per matrix; README "The certificate"). A failure is a
            ``RuntimeError`` naming the weight on the CPU; on CUDA that matrix is recomputed on
            the exact ``aten`` route, with one warning. ``False`` skips it, for a route you have
            verified.

    Returns:
        ``(new_weights, new_biases)`` in the input shapes and dtypes, new tensors that do not
        require grad (SVS is not differentiable here), whatever ``requires_grad`` the inputs have.

    Raises:
        TypeError, ValueError: wrong arguments, a ``method`` the device lacks (:func:`check_args`
            and the operator's own checks).
        RuntimeError: NaN/Inf in an input, a solver failure, a result past the dtype's range
            (e.g. ``square`` of large float16 weights), a result that fails its certificate
            (a bug of this library; CPU).
    """
    weights, biases = check_args(weights, biases, map, eps)
    with torch.no_grad():
        return torch.ops.svs.refine(weights, biases, map, eps, method, bool(certify))


def refine_with_spectra(
    weights: Sequence[torch.Tensor],
    biases: Optional[Sequence[Optional[torch.Tensor]]] = None,
    *,
    map: str = DEFAULT_MAP,
    eps: float = DEFAULT_EPS,
    method: str = DEFAULT_METHOD,
    certify: bool = DEFAULT_CERTIFY,
) -> Tuple[List[torch.Tensor], List[Optional[torch.Tensor]], List[torch.Tensor], List[str]]:
    """:func:`refine`, plus what the operator learned per weight at no extra decomposition: its
    singular values (float64, descending, zero below the rank tolerance, on its device) and the
    name of the route that computed them (e.g. ``aten:gram``, ``cuda:small``;
    ``fallback:aten:svd`` for a CUDA result that failed its certificate and was recomputed). The
    spectrum of the refined weight follows from them: :func:`map_spectrum`."""
    weights, biases = check_args(weights, biases, map, eps)
    with torch.no_grad():
        new_w, new_b, spectra, codes = torch.ops.svs.refine_with_spectra(weights, biases, map, eps, method, bool(certify))
    names = route_names()
    return new_w, new_b, spectra, [names[c] for c in codes.tolist()]


def map_spectrum(s: torch.Tensor, map: str = DEFAULT_MAP) -> torch.Tensor:
    """The singular values of a refined weight from those of the weight (as
    :func:`refine_with_spectra` returns them): ``f(s)`` sorted descending, zeros kept (float64)."""
    return torch.ops.svs._map_spectrum(s, map)


def route_names() -> List[str]:
    """Names of the decomposition routes, by the code ``torch.ops.svs.refine_with_spectra`` returns."""
    return list(torch.ops.svs._route_names())


def method_names(device: Union[str, torch.device] = "cpu") -> List[str]:
    """The ``method=`` values :func:`refine` accepts on ``device`` (a device or its type), as this
    build of the extension registers them; empty where it has no kernel for the device."""
    return list(torch.ops.svs._method_names(str(torch.device(device).type)))


def refine_(
    weights: Sequence[torch.Tensor],
    biases: Optional[Sequence[Optional[torch.Tensor]]] = None,
    *,
    map: str = DEFAULT_MAP,
    eps: float = DEFAULT_EPS,
    method: str = DEFAULT_METHOD,
    certify: bool = DEFAULT_CERTIFY,
) -> None:
    """In-place :func:`refine`, all or nothing: every result is computed and certified before
    the first write, so on any error (one naming the weight) no tensor is changed.
    It needs one copy of the weights in extra memory. As for torch's own in-place
    ops, a tensor that requires grad is refused while grad mode is on; under ``torch.no_grad()``
    (as optimizers update parameters) it is changed in place and autograd does not see it.
    """
    weights, biases = check_args(weights, biases, map, eps)
    _check_disjoint([(f"{what}[{i}]", t) for what, items in (("weights", weights), ("biases", biases))
                     for i, t in enumerate(items) if t is not None])
    if torch.is_grad_enabled():
        for what, items in (("weights", weights), ("biases", biases)):
            for i, t in enumerate(items):
                if t is not None and t.requires_grad:
                    raise RuntimeError(
                        f"svs.refine_: {what}[{i}] requires grad, and in-place SVS is not differentiable; "
                        "call it under torch.no_grad() (as an optimizer step does) or on tensor.detach()"
                    )
    with torch.no_grad():
        torch.ops.svs.refine_(weights, biases, map, eps, method, bool(certify))


def _check_disjoint(named: List[Tuple[str, torch.Tensor]]) -> None:
    """Refuses inputs of :func:`refine_` that share memory (views of one storage that overlap, or
    one tensor whose elements alias, as ``expand`` makes): each result is written over its input,
    so an overlap would end with another weight's result. Views that share a storage without
    sharing an element (``w[:, ::2]``, ``w[:, 1::2]``) are fine."""
    for i, (name, t) in enumerate(named):
        if torch._debug_has_internal_overlap(t) == 1:
            raise ValueError(f"{name} has elements that share memory (expanded?); refine_ writes in place: pass a copy")
        for other, u in named[:i]:
            if t.device == u.device and t.untyped_storage().data_ptr() == u.untyped_storage().data_ptr() and _overlap(t, u):
                raise ValueError(f"{name} and {other} overlap in memory (views of one tensor); refine_ writes in place: "
                                 "pass separate tensors or use svs.refine")


def _byte_span(t: torch.Tensor) -> Tuple[int, int]:
    size = t.element_size()
    last = t.storage_offset() + sum((d - 1) * s for d, s in zip(t.shape, t.stride()) if d > 0)
    return t.storage_offset() * size, (last + 1) * size


def _overlap(t: torch.Tensor, u: torch.Tensor) -> bool:
    """Whether two tensors of one storage share a byte: their spans first, element by element only
    when the spans meet (interleaved views), on a mask of the storage in units of the smaller item."""
    (a0, a1), (b0, b1) = _byte_span(t), _byte_span(u)
    if a1 <= b0 or b1 <= a0:
        return False
    unit = min(t.element_size(), u.element_size())
    mask = torch.zeros(max(a1, b1) // unit, dtype=torch.bool)

    def units(x: torch.Tensor) -> torch.Tensor:
        per = x.element_size() // unit
        first = torch.arange(mask.numel() // per).as_strided(x.shape, x.stride(), x.storage_offset()).reshape(-1) * per
        return (first.unsqueeze(1) + torch.arange(per)).reshape(-1)

    mask[units(t)] = True
    return bool(mask[units(u)].any())
