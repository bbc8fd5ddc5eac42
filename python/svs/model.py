"""SVS of a whole model or state dict, in place or as a new dict, in one process or across the
ranks of a ``torch.distributed`` group. All-or-nothing: on any error nothing is modified."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from .distributed import refine_tensors_across
from .report import RefineReport
from .tensors import refine_tensors


def refine_model(
    model: nn.Module,
    preset: str = "generic",
    include: Optional[str] = None,
    exclude: Optional[str] = None,
    map: str = "sqrt",
    method: str = "auto",
    eps: float = 1e-8,
    certify: bool = True,
    dry_run: bool = False,
    stats: bool = True,
    progress: bool = False,
    process_group: Optional[Any] = None,
) -> RefineReport:
    """Applies Singular Value Scaling to ``model`` in place and returns a report.

    Args:
        model: any module; its parameters may live on the CPU or one GPU.
        preset: the layer rule: ``ddpm`` (every non-norm weight and bias; norm layers reset to
            weight 1, bias 0 first, as the authors' DDPM code does), ``stylegan2`` / ``stylegan3``
            (synthesis network only: convs, affines, ToRGB), ``generic`` (every weight with
            ndim >= 2 and its bias).
        include / exclude: regular expressions on parameter names narrowing the preset.
        map, method, eps, certify: as in :func:`svs.refine`.
        dry_run: only report what would be refined (with the current spectra).
        stats: report the extreme singular values before and after: from the decomposition the
            refinement makes anyway (the "after" spectrum is the map applied to it), so they cost
            nothing extra; with ``dry_run`` one ``svdvals`` pass measures "before".
        progress: show a progress bar (over the operator calls and the spectra, which are both
            cut into batches of bounded work, so it moves about every second on a CPU).
        process_group: a ``torch.distributed`` group whose ranks all call this on the same model
            (``torchrun``): each refines its share of the matrices (split by estimated cost) on
            its own device, and every rank's model ends with all refined parameters, bit-identical
            to one process (:mod:`svs.distributed`). A rank's error is raised on every rank.

    Selected tensors that SVS cannot use (empty, not floating point) are skipped, with the other
    member of their weight/bias pair, and listed in the report with the reason.

    Raises:
        RefineError: a selected parameter has NaN/Inf or could not be decomposed; the message names
            it and no parameter of ``model`` was changed.
        ValueError: nothing selected, an unknown preset or map, a bad regular expression.
    """
    params = dict(model.named_parameters())
    named = {n: p.detach() for n, p in params.items()}
    kwargs = dict(preset=preset, include=include, exclude=exclude, map=map, method=method, eps=eps,
                  certify=certify, dry_run=dry_run, stats=stats)
    if process_group is not None:
        new, report = refine_tensors_across(named, process_group, **kwargs)
    else:
        new, report = refine_tensors(named, progress=progress, **kwargs)
    with torch.no_grad():
        for name, value in new.items():
            params[name].copy_(value)
    return report


def refine_state_dict(
    state: Dict[str, torch.Tensor], **kwargs
) -> Tuple[Dict[str, torch.Tensor], RefineReport]:
    """Like :func:`refine_model` for a state dict: returns a new dict (entries that are not
    refined are shared with ``state``; values that are not tensors are kept as they are) and the
    report. Keyword arguments as for refine_model."""
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    new, report = refine_tensors(tensors, **kwargs)
    return {**state, **new}, report
