"""The engine of a refinement: one batch of the plan (:mod:`svs.planner`) through the operator, and
what the report says of each of its tensors. Each call is one batched decomposition, run through
:func:`svs.interrupt.compute`, so that Ctrl-C and a progress bar land between batches."""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import torch

from . import ops
from .interrupt import compute
from .options import RefineOptions
from .planner import Batch, Plan
from .presets import Role
from .report import ParamRecord
from .spectrum import singular_values


class RefineError(RuntimeError):
    """A parameter could not be refined; the message names it. Nothing was modified."""


def refine_batch(values: Dict[str, torch.Tensor], batch: Batch, plan: Plan, options: RefineOptions
                 ) -> Tuple[Dict[str, torch.Tensor], Dict[str, ParamRecord]]:
    """New values of the batch's tensors (none on a dry run) and their records, from ``values``
    (the batch's tensors, on the device that computes them; not modified).

    The records' spectra come from the refinement itself (``refine_with_spectra``, and the map
    for "after"); only a dry run with ``stats`` decomposes, with ``svdvals``, just to measure.
    """
    w = [values[n] for n in batch.weights]
    new: Dict[str, torch.Tensor] = {}
    spectra: Optional[List[torch.Tensor]] = None
    routes = [f"{options.method} (not run)"] * len(w)  # a dry run's route column: no route decomposed anything
    if options.dry_run:
        if options.stats:
            spectra = singular_values(w)
    else:
        b = [values[batch.biases[n]] if n in batch.biases else None for n in batch.weights]
        out = _call_refine(batch, w, b, options)
        for n, value, bias in zip(batch.weights, out[0], out[1]):
            new[n] = value
            if bias is not None:
                new[batch.biases[n]] = bias
        if options.stats:
            spectra, routes = _on_cpu(out[2]), out[3]
        for name in batch.resets:
            new[name] = (torch.ones_like if plan.roles[name] is Role.RESET_ONE else torch.zeros_like)(values[name])
    records: Dict[str, ParamRecord] = {}
    for i, name in enumerate(batch.weights):
        rec = records[name] = ParamRecord(name, plan.shapes[name], Role.WEIGHT.value, routes[i])
        if spectra is not None:
            s = spectra[i]
            rec.before_max, rec.before_min = float(s[0]), float(s[-1])
            if not options.dry_run:
                after = ops.map_spectrum(s, options.map)
                rec.after_max, rec.after_min = float(after[0]), float(after[-1])
        if name in batch.biases:
            bias = batch.biases[name]
            records[bias] = ParamRecord(bias, plan.shapes[bias], Role.BIAS.value, "b/sqrt(|b|+eps)",
                                        before_max=float(values[bias].detach().double().norm()))
            if bias in new:
                records[bias].after_max = float(new[bias].double().norm())
    for name in batch.resets:
        role = plan.roles[name].value
        records[name] = ParamRecord(name, plan.shapes[name], role, role)
    return new, records


def _on_cpu(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    """The tensors on the CPU with one device-to-host copy (not one sync per tensor)."""
    if not tensors or tensors[0].device.type == "cpu":
        return tensors
    flat = torch.cat([t.flatten() for t in tensors]).cpu()
    return list(flat.split([t.numel() for t in tensors]))


def _call_refine(batch: Batch, w: List[torch.Tensor], b: List[Optional[torch.Tensor]], options: RefineOptions):
    """The operator call (:func:`ops.refine_with_spectra` when ``options.stats``), with its
    ``weights[i]`` / ``biases[i]`` in errors replaced by names; the operator's own errors
    (NaN/Inf, solver) become :class:`RefineError`."""
    fn = ops.refine_with_spectra if options.stats else ops.refine
    try:
        out = compute(lambda: fn(w, b, **options.operator()))
    except (RuntimeError, ValueError, TypeError) as err:
        def name_of(m: re.Match) -> str:
            weight = batch.weights[int(m.group(2))]
            name = weight if m.group(1) == "weights" else batch.biases[weight]
            return f"parameter '{name}'"

        message = str(err).splitlines()[0] if str(err) else repr(err)
        message = re.sub(r"(weights|biases)\[(\d+)\]", name_of, message)
        raise (RefineError if isinstance(err, RuntimeError) else type(err))(message) from err
    return out
