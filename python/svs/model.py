"""SVS of a whole model or state dict, in place or as a new dict, in one process or across the
ranks of a ``torch.distributed`` group: the in-memory source of the one pipeline
(:mod:`svs.refinement`). All-or-nothing: on any error nothing is modified."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Dict, Iterable, Optional, Tuple

import torch
from torch import nn

from .distributed import Ranks, exchange
from .layouts import Layout, expand, of_module
from .options import DEFAULTS, RefineOptions
from .planner import Batch, Plan
from .presets import Role
from .refinement import run
from .report import RefineReport


def refine_model(
    model: nn.Module,
    preset: str = DEFAULTS.preset,
    include: Optional[str] = DEFAULTS.include,
    exclude: Optional[str] = DEFAULTS.exclude,
    map: str = DEFAULTS.map,
    method: str = DEFAULTS.method,
    eps: float = DEFAULTS.eps,
    certify: bool = DEFAULTS.certify,
    dry_run: bool = DEFAULTS.dry_run,
    stats: bool = DEFAULTS.stats,
    progress: bool = DEFAULTS.progress,
    process_group: Optional[Any] = None,
) -> RefineReport:
    """Applies Singular Value Scaling to ``model`` in place and returns a report.

    Args:
        model: any module; its parameters may live on the CPU or one GPU.
        preset: the layer rule: ``ddpm`` (every non-norm weight and bias; norm layers reset to
            weight 1, bias 0 first, as the authors' DDPM code does), ``stylegan2`` / ``stylegan3``
            (synthesis network only: convs, affines, ToRGB), ``generic`` (every weight with
            ndim >= 2 and its bias), ``transformer`` (the projections inside the blocks; not
            embeddings, the head, norms or MoE routers). Every preset leaves PEFT's ``lora_*``
            adapters alone (and refines their ``base_layer``).
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
            to one process (:mod:`svs.refinement`). A rank's error is raised on every rank.

    Each layer's weight is decomposed as the matrix ``(out, in...)`` whatever its storage
    (``nn.ConvTranspose*``, transformers' ``Conv1D`` and fused MoE experts: :mod:`svs.layouts`); the
    experts' matrices appear in the report and to presets as ``<experts>.N.gate_proj.weight`` etc.,
    and the report gives each weight the shape of the matrix decomposed.
    Selected tensors that SVS cannot use (empty, not floating point) are skipped, with the other
    member of their weight/bias pair, and listed in the report with the reason; the report's
    ``left_alone`` says why the preset left each other parameter alone.

    Raises:
        RefineError: a selected parameter has NaN/Inf or could not be decomposed; the message names
            it and no parameter of ``model`` was changed.
        ValueError: nothing selected, an unknown preset or map, a bad regular expression; a
            selected parameter on the meta device (not loaded, or offloaded by accelerate).
    """
    params = dict(model.named_parameters())
    options = RefineOptions(preset=preset, include=include, exclude=exclude, map=map, method=method, eps=eps,
                            certify=certify, dry_run=dry_run, stats=stats, progress=progress)

    def apply(new: Dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, value in new.items():
                params[name].copy_(value)

    return run(InMemory({n: p.detach() for n, p in params.items()}, of_module(model), apply), options, process_group)


def refine_state_dict(
    state: Dict[str, torch.Tensor], layouts: Optional[Iterable[Layout]] = None, **kwargs
) -> Tuple[Dict[str, torch.Tensor], RefineReport]:
    """Like :func:`refine_model` for a state dict: returns a new dict (entries that are not
    refined are shared with ``state``; values that are not tensors are kept as they are) and the
    report. A state dict has no modules, so every weight is taken as ``(out, in...)`` unless
    ``layouts`` says otherwise (``svs.layouts.of_module(model)`` of the model it came from).
    Keyword arguments as for refine_model (without ``process_group``)."""
    options = RefineOptions(**kwargs)
    out = dict(state)
    report = run(InMemory({k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, layouts or [], out.update),
                 options)
    return out, report


class InMemory:
    """The :class:`~svs.refinement.Source` of tensors in memory (a module's parameters, a state
    dict): refined where they are, and put in place by ``apply`` (new values of the stored
    tensors, by name) only once every batch has succeeded, on every rank."""

    def __init__(self, stored: Dict[str, torch.Tensor], layouts: Iterable[Layout],
                 apply: Callable[[Dict[str, torch.Tensor]], None]):
        self.views, self.fold = expand(stored, layouts)
        self.apply = apply
        self.new: Dict[str, torch.Tensor] = {}
        self.one_call = any(t.is_cuda for t in self.views.values())

    def tensors(self) -> Dict[str, torch.Tensor]:
        return self.views

    def check(self, selected: Dict[str, Role]) -> None:
        """Refuses a selected tensor on the meta device (``init_empty_weights``, or a parameter
        accelerate offloaded to disk): its values are not in memory, so there is nothing to refine."""
        for name, role in selected.items():
            if role is not Role.SKIP and self.views[name].is_meta:
                raise ValueError(
                    f"parameter {name!r} is on the meta device: its values are not loaded (init_empty_weights, or "
                    "offloaded by device_map=...); load the model onto the CPU or a GPU first, or refine its "
                    "checkpoint directory with svs refine DIR")

    def open(self, plan: Plan, ranks: Ranks) -> ContextManager[None]:
        return contextlib.nullcontext()

    def load(self, batch: Batch) -> Dict[str, torch.Tensor]:
        return {n: self.views[n] for n in batch.names()}

    def write(self, batch: Batch, new: Dict[str, torch.Tensor]) -> None:
        self.new.update(new)

    def finish(self, plan: Plan, report: RefineReport, ranks: Ranks) -> None:
        if not report.dry_run:
            self.apply(self.fold(exchange(ranks, plan, self.new, self.views)))


def check_device(device: str) -> torch.device:
    """``device`` as a ``torch.device`` that this torch can refine on, or a one-line
    ``ValueError`` saying why not (a CPU-only torch, no GPU visible, an unknown name)."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and torch.version.cuda is None:
        raise ValueError(f"device {device!r}: this torch ({torch.__version__}) is built without CUDA; use cpu, "
                         "or install a CUDA build of torch")
    if dev.type == "cuda" and not (torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()):
        raise ValueError(f"device {device!r}: no such GPU is visible ({torch.cuda.device_count()} visible); use cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: svs refines on cpu or cuda")
    return dev

