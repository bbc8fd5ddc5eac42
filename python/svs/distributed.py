"""The ranks of a ``torch.distributed`` process group (as ``torchrun`` starts them), as the one
pipeline (:mod:`svs.refinement`) uses them: one process is a group of one.

The planner assigns each batch to a rank by estimated cost (:func:`svs.planner.assign`), each rank
refines its share with the same operator on its own device, and the results are exchanged
(:func:`exchange`) or written by their rank. Each matrix is refined by the same kernel on the same
input as in one process, and the operator's result for a matrix does not depend on its batch mates,
so the output is bit-identical to the single-process run. A rank that fails makes every rank raise
with its message (:meth:`Ranks.together`).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, TypeVar

import torch

from .engine import RefineError

if TYPE_CHECKING:
    from .planner import Plan

T = TypeVar("T")


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


def exchange(ranks: Ranks, plan: "Plan", mine: Dict[str, torch.Tensor], like: Dict[str, torch.Tensor]
             ) -> Dict[str, torch.Tensor]:
    """The new values of every batch of ``plan`` on every rank, each broadcast from the rank that
    computed it (``mine``: this rank's; ``like``: a tensor of each name's shape and dtype)."""
    if ranks.group is None:
        return mine
    import torch.distributed as dist

    new: Dict[str, torch.Tensor] = {}
    for batch, rank in zip(plan.batches, plan.owner):
        for name in batch.names():
            value = mine[name] if rank == ranks.rank else torch.empty_like(like[name], memory_format=torch.contiguous_format)
            dist.broadcast(value, src=dist.get_global_rank(ranks.group, rank), group=ranks.group)
            new[name] = value
    return new
