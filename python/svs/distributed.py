"""SVS spread over the ranks of a ``torch.distributed`` process group (as ``torchrun`` starts them).

The matrices are split by estimated cost, largest first onto the least-loaded rank (the LPT rule),
each rank refines its share with the same operator on its own device, and the results are
exchanged. Each matrix is refined by the same kernel on the same input as in one process, and the
operator's result for a matrix does not depend on its batch mates, so the output is bit-identical
to the single-process run. A rank that fails makes every rank raise with its message.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import torch

from .options import RefineOptions
from .tensors import RefineError, refine_tensors, skip_unusable
from .presets import Role, paired_weight, select
from .report import RefineReport
from .spectrum import batches

T = TypeVar("T")

# Float64 bytes of the matrices of one job: a batch of many small matrices (spectrum.batches bounds
# work, not bytes) is cut to this, so that one refine call's workspace, a few float64 copies of its
# matrices, stays a few hundred MB (or one matrix's, when that is bigger).
JOB_BYTES = 1 << 26

# Per-call overhead of the cost model m*n*min(m, n) + OVERHEAD, in the same units; the benchmarks'
# time estimates use the same model (benchmarks/workloads.py, Workload.costs).
OVERHEAD = 3e4


def matrix_cost(shape: Sequence[int]) -> float:
    """Estimated work of refining one weight of ``shape`` (flattened to ``(shape[0], -1)``)."""
    rows = shape[0]
    cols = math.prod(shape) // max(rows, 1)
    return rows * cols * min(rows, cols) + OVERHEAD


def assign(costs: Sequence[float], world: int) -> List[int]:
    """The rank of each job: largest cost first onto the least-loaded rank (ties: lowest rank).
    Deterministic, so every rank computes the same split without talking."""
    loads = [0.0] * world
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world), key=lambda r: (loads[r], r))
        owner[i] = rank
        loads[rank] += costs[i]
    return owner


@dataclasses.dataclass
class Ranks:
    """This process's place in a process group; a single process when ``group`` is None.
    Objects (errors, report records) travel over a gloo group, so NCCL groups work too."""

    group: Any = None
    rank: int = 0
    world: int = 1
    objects: Any = None

    @classmethod
    def of(cls, group: Any) -> "Ranks":
        if group is None:
            return cls()
        import torch.distributed as dist

        objects = group if dist.get_backend(group) == "gloo" else dist.new_group(dist.get_process_group_ranks(group), backend="gloo")
        return cls(group, dist.get_rank(group), dist.get_world_size(group), objects)

    def gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.group is None:
            return [obj]
        import torch.distributed as dist

        out: List[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.objects)
        return out

    def from_rank0(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        return self.gather(obj)[0]

    def check(self, error: Optional[BaseException]) -> None:
        """Raises on every rank when any rank failed: in one process the error itself, else a
        :class:`RefineError` (``ValueError`` for a bad input) with the first failing rank's
        message. A collective, so every rank must call it."""
        if self.group is None:
            if error is not None:
                raise error
            return
        found = self.gather(None if error is None else (isinstance(error, ValueError), _first_line(error)))
        for rank, failure in enumerate(found):
            if failure is not None:
                raise (ValueError if failure[0] else RefineError)(f"rank {rank}: {failure[1]}") from error

    def together(self, fn: Callable[[], T]) -> T:
        """``fn()`` on every rank, then :meth:`check`: all ranks go on, or all raise."""
        result, error = None, None
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001  (reported to every rank, then raised)
            error = err
        self.check(error)
        return result  # type: ignore[return-value]


def from_env(device: str = "cpu") -> Tuple[Any, str]:
    """The process group ``torchrun`` set up the environment for (``WORLD_SIZE`` > 1; gloo, or
    NCCL when ``device`` is ``cuda``), initialised here, and this rank's device (``cuda`` becomes
    ``cuda:LOCAL_RANK``). ``(None, device)`` in a single process."""
    import os

    from .model import check_device

    check_device(device)
    if device == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, device
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.group.WORLD, device


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def plan(named: Dict[str, torch.Tensor], preset: str = "generic", include: Optional[str] = None,
         exclude: Optional[str] = None) -> Tuple[List[List[str]], Dict[str, str]]:
    """The jobs of a refinement split into separate refine calls: the selected usable weights in
    batches of one shape, bounded work (:func:`svs.spectrum.batches`) and bounded bytes
    (``JOB_BYTES``), each with the biases of its weights; the first job also carries the norm
    parameters a preset resets and the skipped tensors (so that its report lists them). Each job, refined on its own, selects exactly what
    it would as part of the whole (roles look at names and shapes only, and a bias travels with
    its weight). Returns the jobs (none when nothing usable is selected) and why each skipped
    tensor is skipped."""
    roles = select(named, preset, include, exclude)
    skipped = skip_unusable(named, roles)
    weights = [n for n, r in roles.items() if r is Role.WEIGHT]
    biases = {paired_weight(n): n for n, r in roles.items() if r is Role.BIAS}
    jobs = []
    for idx in batches([named[n].shape for n in weights]):
        size = max(1, JOB_BYTES // (8 * named[weights[idx[0]]].numel()))
        jobs += [[x for i in idx[k:k + size] for x in (weights[i], biases.get(weights[i])) if x]
                 for k in range(0, len(idx), size)]
    if jobs:
        jobs[0] += [n for n, r in roles.items() if r in (Role.RESET_ONE, Role.RESET_ZERO)] + list(skipped)
    return jobs, skipped


def job_cost(named: Dict[str, torch.Tensor], job: Sequence[str]) -> float:
    return sum(matrix_cost(named[n].shape) for n in job if named[n].ndim >= 2)


def merge_reports(parts: Sequence[RefineReport], order: Sequence[str], template: RefineReport, seconds: float) -> RefineReport:
    """One report from the reports of several refine calls, records in ``order``."""
    records = {r.name: r for part in parts for r in part.records}
    return dataclasses.replace(template, records=[records[n] for n in order if n in records], seconds=seconds)


def refine_tensors_across(
    named: Dict[str, torch.Tensor], group: Any, options: RefineOptions
) -> Tuple[Dict[str, torch.Tensor], RefineReport]:
    """:func:`svs.tensors.refine_tensors` with the weights split over the ranks of ``group``; every
    rank returns all new values (each refined on its owner and broadcast from there) and the whole
    report. Every rank must hold the same names and shapes; ``named`` is not modified."""
    import torch.distributed as dist

    ranks = Ranks.of(group)
    jobs, skipped = plan(named, options.preset, options.include, options.exclude)
    if not jobs:  # the same error as one process gives
        return refine_tensors(named, options)
    owner = assign([job_cost(named, job) for job in jobs], ranks.world)
    start = time.perf_counter()

    def my_share() -> Tuple[Dict[str, torch.Tensor], List[RefineReport]]:
        mine: Dict[str, torch.Tensor] = {}
        parts: List[RefineReport] = []
        for job, rank in zip(jobs, owner):
            if rank == ranks.rank:
                new, report = refine_tensors({n: named[n] for n in job}, options)
                mine.update(new)
                parts.append(report)
        return mine, parts

    mine, parts = ranks.together(my_share)
    new = {}
    if not options.dry_run:
        for job, rank in zip(jobs, owner):
            for name in job:
                if name in skipped:
                    continue
                value = mine[name] if rank == ranks.rank else torch.empty_like(named[name], memory_format=torch.contiguous_format)
                dist.broadcast(value, src=dist.get_global_rank(group, rank), group=group)
                new[name] = value
    all_parts = [p for ps in ranks.gather(parts) for p in ps]
    seconds = max(ranks.gather(time.perf_counter() - start))
    return new, merge_reports(all_parts, list(named), all_parts[0], seconds)
