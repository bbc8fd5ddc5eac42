"""SVS of a dict of named tensors, the engine under :mod:`svs.model`, :mod:`svs.sharded` and
:mod:`svs.distributed`: select by preset, refine in batched operator calls, report what changed.
All-or-nothing: on any error no tensor is replaced."""
from __future__ import annotations

import re
import time
from typing import Dict, List, Optional, Tuple

import torch

from . import ops
from .interrupt import compute
from .options import DEFAULTS, RefineOptions
from .presets import Role, paired_weight, select_with_reasons
from .report import ParamRecord, RefineReport
from .spectrum import batches, singular_values


class RefineError(RuntimeError):
    """A parameter could not be refined; the message names it. Nothing was modified."""


def refine_tensors(
    named: Dict[str, torch.Tensor], options: RefineOptions = DEFAULTS
) -> Tuple[Dict[str, torch.Tensor], RefineReport]:
    """New values of the selected tensors of ``named`` (not modified) and the report.

    See :func:`refine_model` for the options. Returns ``({}, report)`` when ``dry_run``.
    """
    preset, include, exclude, map, method = options.preset, options.include, options.exclude, options.map, options.method
    dry_run, stats, progress = options.dry_run, options.stats, options.progress
    roles, why = select_with_reasons(named, preset, include, exclude)
    skipped = skip_unusable(named, roles)
    weights = [n for n, r in roles.items() if r is Role.WEIGHT]
    if not weights:
        raise ValueError(
            f"preset {preset!r} with include={include!r}, exclude={exclude!r} selects no weight "
            f"among {len(named)} tensors" + (f" ({len(skipped)} skipped: empty or not floating point)" if skipped else "")
        )
    bias_of = {paired_weight(n): n for n, r in roles.items() if r is Role.BIAS}
    _check_pairs(named, bias_of)
    device = named[weights[0]].device
    if device.type == "meta":
        raise ValueError(f"{weights[0]!r} is on the meta device (a shape without data): nothing to refine or "
                         "measure; load the weights first")
    # The report's spectra come from the refinement itself (refine_with_spectra, and the map for
    # "after"); only a dry run with stats decomposes just to measure.
    with _progress_bar(len(weights) if (stats or not dry_run) else 0, progress) as bar:  # closed on Ctrl-C too
        start = time.perf_counter()
        if dry_run:
            new, spectra, routes = {}, singular_values([named[n] for n in weights], bar.update) if stats else None, {}
        else:
            new, spectra, routes = _refined(named, roles, weights, bias_of, bar.update, stats, **options.operator())
        seconds = time.perf_counter() - start
    if spectra is None:
        before = after = [None] * len(weights)
    else:
        before = _on_cpu(spectra)
        after = [None] * len(weights) if dry_run else [ops.map_spectrum(s, map) for s in before]
    planned = f"{method} (not run)"  # a dry run's route column: nothing was decomposed by a route
    position = {n: i for i, n in enumerate(weights)}
    records: List[ParamRecord] = []
    for name, role in roles.items():
        t = named[name]
        if name in skipped:
            records.append(ParamRecord(name, tuple(t.shape), "skipped", "-", reason=skipped[name]))
            continue
        if role is Role.SKIP:
            continue
        rec = ParamRecord(name, tuple(t.shape), role.value, routes.get(name, planned) if role is Role.WEIGHT else role.value)
        if role is Role.WEIGHT and stats:
            i = position[name]
            rec.before_max, rec.before_min = float(before[i][0]), float(before[i][-1])
            if after[i] is not None:
                rec.after_max, rec.after_min = float(after[i][0]), float(after[i][-1])
        elif role is Role.BIAS:
            rec.route = "b/sqrt(|b|+eps)"
            rec.before_max = float(t.detach().double().norm())
            if name in new:
                rec.after_max = float(new[name].double().norm())
        records.append(rec)
    report = RefineReport(records, map=map, method=method, device=str(device), dry_run=dry_run, seconds=seconds,
                          left_alone=by_reason(why))
    return new, report


def by_reason(why: Dict[str, str]) -> Dict[str, List[str]]:
    """``{name: reason}`` as ``{reason: [names]}``."""
    out: Dict[str, List[str]] = {}
    for name, reason in why.items():
        out.setdefault(reason, []).append(name)
    return out


def _check_pairs(named: Dict[str, torch.Tensor], bias_of: Dict[str, str]) -> None:
    """Refuses a bias whose size is not its weight's first dimension (the output SVS assumes),
    before any work and on a dry run too: a layer stored ``(in, out)`` without its module."""
    for weight, bias in bias_of.items():
        w, b = named[weight], named[bias]
        if tuple(b.shape) != (w.shape[0],):
            raise ValueError(
                f"bias {bias!r} has shape {list(b.shape)} but its weight {weight!r} has {list(w.shape)}, whose first "
                "dimension SVS takes as the output: a layer that stores (in, out) (as GPT-2's Conv1D)? Refine the "
                "model itself (svs.refine_model), its directory with its config.json, or pass layouts=")


def skip_unusable(named: Dict[str, torch.Tensor], roles: Dict[str, Role]) -> Dict[str, str]:
    """Why each selected tensor that SVS cannot use is skipped (empty, not floating point), and
    the bias or weight of its layer with it, so that no weight is refined without its bias. Their
    roles become ``SKIP``."""
    why: Dict[str, str] = {}
    for name, role in roles.items():
        t = named[name]
        if role is Role.SKIP:
            continue
        if not t.is_floating_point():
            why[name] = f"dtype {t.dtype} is not floating point"
        elif t.numel() == 0:
            why[name] = "empty tensor"
    for bias, role in roles.items():
        weight = paired_weight(bias)
        if role is not Role.BIAS:
            continue
        if bias in why and weight not in why:
            why[weight] = f"its bias is skipped ({why[bias]})"
        elif weight in why and bias not in why:
            why[bias] = "its weight is skipped"
    for name in why:
        roles[name] = Role.SKIP
    return why


def _refined(named, roles, weights, bias_of, on_batch, spectra: bool, **kwargs):
    """New values of the weights, their biases and the reset norm parameters; with ``spectra``
    also each weight's singular values (list in the order of ``weights``) and route name (dict).
    On the CPU one operator call per batch of equal shapes and bounded work, so that Ctrl-C and
    the progress bar land between calls (each is one batched decomposition); on a GPU one call
    for all (the CUDA kernel batches across shapes and bounds its own memory)."""
    new: Dict[str, torch.Tensor] = {}
    values: List[Optional[torch.Tensor]] = [None] * len(weights)
    routes: Dict[str, str] = {}
    on_gpu = named[weights[0]].device.type == "cuda"
    for idx in [list(range(len(weights)))] if on_gpu else batches([named[n].shape for n in weights]):
        chunk = [weights[i] for i in idx]
        w = [named[n] for n in chunk]
        b = [named[bias_of[n]] if n in bias_of else None for n in chunk]
        out = _call_refine(chunk, bias_of, w, b, spectra=spectra, **kwargs)
        for j, (i, n) in enumerate(zip(idx, chunk)):
            new[n] = out[0][j]
            if out[1][j] is not None:
                new[bias_of[n]] = out[1][j]
            if spectra:
                values[i], routes[n] = out[2][j], out[3][j]
        on_batch(len(chunk))
    for name, role in roles.items():
        if role is Role.RESET_ONE:
            new[name] = torch.ones_like(named[name])
        elif role is Role.RESET_ZERO:
            new[name] = torch.zeros_like(named[name])
    return new, (values if spectra else None), routes


def _on_cpu(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    """The tensors on the CPU with one device-to-host copy (not one sync per tensor)."""
    if not tensors or tensors[0].device.type == "cpu":
        return tensors
    flat = torch.cat([t.flatten() for t in tensors]).cpu()
    return list(flat.split([t.numel() for t in tensors]))


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="SVS", unit="matrix", disable=not enabled)


def _call_refine(names, bias_of, w, b, spectra: bool = False, **kwargs):
    """The operator call (:func:`ops.refine_with_spectra` when ``spectra``), with its
    ``weights[i]`` / ``biases[i]`` in errors replaced by names; the operator's own errors
    (NaN/Inf, solver) become :class:`RefineError`."""
    fn = ops.refine_with_spectra if spectra else ops.refine
    try:
        return compute(lambda: fn(w, b, **kwargs))
    except (RuntimeError, ValueError, TypeError) as err:
        def name_of(m: re.Match) -> str:
            weight = names[int(m.group(2))]
            name = weight if m.group(1) == "weights" else bias_of[weight]
            return f"parameter '{name}'"

        message = str(err).splitlines()[0] if str(err) else repr(err)
        message = re.sub(r"(weights|biases)\[(\d+)\]", name_of, message)
        raise (RefineError if isinstance(err, RuntimeError) else type(err))(message) from err
