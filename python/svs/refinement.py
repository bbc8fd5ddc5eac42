"""One refinement, the same for every source, read in one direction:

1. the source lists its tensors (:meth:`Source.tensors`: a module's parameters, a state dict, the
   meta tensors of a checkpoint directory; each layer's matrix as :mod:`svs.layouts` views it);
2. the planner selects, pairs, batches and assigns the batches to ranks (:mod:`svs.planner`);
3. for each of this rank's batches: the source loads its tensors, the engine refines them
   (:mod:`svs.engine`), the source's sink writes the results;
4. the report is built once (:func:`svs.report.build`), and the sink finishes: all or nothing.

:func:`svs.refine_model`, :func:`svs.refine_state_dict` and ``svs refine DIR`` differ only in
their :class:`Source` (:mod:`svs.model`, :mod:`svs.sharded`).
"""
from __future__ import annotations

import time
from typing import Any, ContextManager, Dict, Optional, Protocol

import torch

from .distributed import Ranks
from .engine import refine_batch
from .options import RefineOptions
from . import planner
from .planner import Batch, Plan
from .presets import Role
from .report import ParamRecord, RefineReport, build, progress_bar


class Source(Protocol):
    """Where the tensors come from, and where their new values go (the source's sink)."""

    one_call: bool  # the tensors are on a GPU already: one operator call for all, in one process

    def tensors(self) -> Dict[str, torch.Tensor]:
        """Every tensor by name, in the source's order (meta tensors will do: the planner looks
        at names, shapes and dtypes)."""

    def check(self, selected: Dict[str, Role]) -> None:
        """Refuses, before any work, a selection this source cannot refine."""

    def open(self, plan: Plan, ranks: Ranks) -> ContextManager[Any]:
        """Prepares the output (and undoes it should the run fail)."""

    def load(self, batch: Batch) -> Dict[str, torch.Tensor]:
        """The batch's tensors (:meth:`Batch.names`) on the device that refines them."""

    def write(self, batch: Batch, new: Dict[str, torch.Tensor]) -> None:
        """Takes the new values of one batch (none on a dry run)."""

    def finish(self, plan: Plan, report: RefineReport, ranks: Ranks) -> None:
        """Puts every result in place, on every rank."""


def run(source: Source, options: RefineOptions, group: Optional[Any] = None) -> RefineReport:
    """Refines ``source`` (over the ranks of ``group``, a ``torch.distributed`` process group whose
    ranks all call this with the same source and options) and returns the whole report on every
    rank. A rank's error is raised on every rank, and nothing is written."""
    ranks = Ranks.of(group)
    plan = planner.plan(source.tensors(), options, ranks.world, source.one_call and ranks.world == 1, source.check)
    mine = [b for b, rank in zip(plan.batches, plan.owner) if rank == ranks.rank]
    with source.open(plan, ranks):
        start = time.perf_counter()

        def my_share() -> Dict[str, Any]:
            records: Dict[str, ParamRecord] = {}
            device = None
            total = sum(len(b.weights) for b in mine) if options.stats or not options.dry_run else 0
            with progress_bar(total, options.progress and ranks.rank == 0) as bar:  # closed on Ctrl-C too
                for batch in mine:
                    values = source.load(batch)
                    new, found = refine_batch(values, batch, plan, options)
                    source.write(batch, new)
                    records.update(found)
                    device = device or str(values[batch.weights[0]].device)
                    bar.update(len(batch.weights))
            return {"records": records, "device": device}

        share = ranks.together(my_share)
        seconds = max(ranks.gather(time.perf_counter() - start))
        shares = ranks.gather(share)
        records = {n: r for s in shares for n, r in s["records"].items()}
        device = next(s["device"] for s in shares if s["device"] is not None)
        report = build(plan, records, options, device, seconds)
        source.finish(plan, report, ranks)
    return report

