"""The plan of a refinement, the same for every source: which tensors (the preset's selection, less
what SVS cannot use), how they pair (a weight with its bias), in which batches (one operator call
each), and under ``torch.distributed`` which rank computes each batch.

It looks at names, shapes and dtypes only, so a directory's meta tensors are planned as a module's
parameters are. Each batch, refined on its own, gives what it would as part of the whole (the
operator's result for a matrix does not depend on its batch mates), so the split changes no bit.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from .options import RefineOptions
from .presets import Role, paired_weight, select_with_reasons
from .spectrum import batches

# Float64 bytes of the matrices of one batch: a batch of many small matrices (spectrum.batches bounds
# work, not bytes) is cut to this, so that one refine call's workspace, a few float64 copies of its
# matrices, stays a few hundred MB (or one matrix's, when that is bigger).
BATCH_BYTES = 1 << 26

# Per-call overhead of the cost model m*n*min(m, n) + OVERHEAD, in the same units; the benchmarks'
# time estimates use the same model (benchmarks/workloads.py, Workload.costs).
OVERHEAD = 3e4


@dataclasses.dataclass
class Batch:
    """One operator call: ``weights`` (one shape, or any mix in a single call), the bias of each
    that has one (``biases``: weight -> bias), and the norm parameters a preset resets (the first
    batch carries them)."""

    weights: List[str]
    biases: Dict[str, str]
    resets: List[str] = dataclasses.field(default_factory=list)

    def names(self) -> List[str]:
        """Every tensor the batch gives a new value: each weight, its bias, then the resets."""
        return [n for w in self.weights for n in (w, self.biases.get(w)) if n] + self.resets


@dataclasses.dataclass
class Plan:
    """What a refinement does; ``order`` is the source's order of every tensor, which the report keeps."""

    order: List[str]
    shapes: Dict[str, Tuple[int, ...]]
    selected: Dict[str, Role]  # the preset's roles, before the unusable tensors were skipped
    roles: Dict[str, Role]  # the roles refined by (the skipped ones SKIP)
    left_alone: Dict[str, str]  # why the preset left each other tensor alone
    skipped: Dict[str, str]  # why each selected tensor that SVS cannot use is skipped
    batches: List[Batch]
    costs: List[float]  # each batch's estimated work (matrix_cost)
    owner: List[int]  # the rank that computes each batch


def plan(named: Dict[str, torch.Tensor], options: RefineOptions, world: int = 1, one_call: bool = False,
         check: Callable[[Dict[str, Role]], None] = lambda selected: None) -> Plan:
    """The plan of refining ``named`` (meta tensors will do) over ``world`` ranks. The selected
    usable weights go in batches of one shape, bounded work (:func:`svs.spectrum.batches`) and
    bounded bytes (``BATCH_BYTES``), or all in one batch with ``one_call`` (tensors on a GPU in
    one process: the CUDA kernel batches across shapes and bounds its own memory). ``check``
    sees the preset's selection first (the source's own refusals: a tensor not loaded, a
    quantized dtype).

    Raises:
        ValueError: the preset selects no usable weight; a bias whose size is not its weight's
            first dimension.
    """
    selected, why = select_with_reasons(named, options.preset, options.include, options.exclude)
    check(selected)
    roles = dict(selected)
    skipped = skip_unusable(named, roles)
    weights = [n for n, r in roles.items() if r is Role.WEIGHT]
    if not weights:
        raise ValueError(
            f"preset {options.preset!r} with include={options.include!r}, exclude={options.exclude!r} selects no "
            f"weight among {len(named)} tensors" + (f" ({len(skipped)} skipped: empty or not floating point)" if skipped else "")
        )
    bias_of = {paired_weight(n): n for n, r in roles.items() if r is Role.BIAS}
    _check_pairs(named, bias_of)
    out: List[Batch] = []
    for idx in [list(range(len(weights)))] if one_call else batches([named[n].shape for n in weights]):
        size = len(idx) if one_call else max(1, BATCH_BYTES // (8 * named[weights[idx[0]]].numel()))
        for k in range(0, len(idx), size):
            chunk = [weights[i] for i in idx[k:k + size]]
            out.append(Batch(chunk, {w: bias_of[w] for w in chunk if w in bias_of}))
    out[0].resets = [n for n, r in roles.items() if r in (Role.RESET_ONE, Role.RESET_ZERO)]
    costs = [sum(matrix_cost(named[w].shape) for w in b.weights) for b in out]
    return Plan(list(named), {n: tuple(t.shape) for n, t in named.items()}, selected, roles, why, skipped, out, costs,
                assign(costs, world))


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


def matrix_cost(shape: Sequence[int]) -> float:
    """Estimated work of refining one weight of ``shape`` (flattened to ``(shape[0], -1)``)."""
    rows = shape[0]
    cols = math.prod(shape) // max(rows, 1)
    return rows * cols * min(rows, cols) + OVERHEAD


def assign(costs: Sequence[float], world: int) -> List[int]:
    """The rank of each batch: largest cost first onto the least-loaded rank (ties: lowest rank),
    the LPT rule. Deterministic, so every rank computes the same split without talking."""
    loads = [0.0] * world
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world), key=lambda r: (loads[r], r))
        owner[i] = rank
        loads[rank] += costs[i]
    return owner
