"""out_i = U_i diag(f(s_i)) Vh_i for every matrix of a call: the Triton kernel of svs::_reconstruct.

Three steps, each one launch for all matrices (per dtype combination, in practice one):
  1. sigma_map: f(s) of every matrix into a packed buffer (float64 evaluation, one rounding);
  2. stage: U diag(f(s)) and Vh into a padded, aligned, row-major workspace, rounded for the
     tensor cores (split into hi + lo for 3xTF32);
  3. gemm: the grouped product (two launches where some outputs need masked stores).

Precision follows the output dtype (the bounds are per element, with B = |U| diag(f(s)) |Vh|,
k the inner dimension, u_acc the unit roundoff of the float32 accumulation: 2^-24, or 2^-23 if
the tensor core truncates):
  float64 factors   float64 on the DMMA tensor cores: |err| <= (k + 2) 2^-53 B
  float32/64 out    3xTF32: |err| <= (2^-20 + (3k + 2) u_acc) B   (float32-grade: the split
                    leaves 3 x 2^-22 per product)
  float16/bf16 out  TF32, both operands rounded to nearest (2^-11 each):
                    |err| <= (2^-10 + 2^-21 + (k + 2) u_acc) B, the size of the 2^-11 / 2^-8
                    rounding of the stored value; 3xTF32 would buy nothing there
plus the rounding of the stored value. tests/svs_kernels/test_triton_ops.py checks each bound, emulating the
tensor-core rounding in the reference.
"""
import math
from typing import List, Sequence, Union

import torch

from . import gemm, stage
from ._layout import CHUNK, DTYPES, STAGE
from ._maps import IDENTITY, parse_map
from .common import TL_DTYPE, check_device, device_ctx, num_programs, to_device
from .sigma_map import launch_map

# Workspace per chunk of matrices: at least this, or a quarter of the free device memory (one
# matrix larger than that gets a chunk of its own).
WORKSPACE_BYTES = 1 << 30

# csrc/launch_table.cpp (svs::_reconstruct_plan) builds every launch table from the operands'
# metadata; its layout (dtype indices, launch kinds, row widths) is _layout's.
_OPERANDS = {DTYPES.index(getattr(torch, name)): name for name in ("float32", "float64")}  # gemm.CONFIGS keys
_PLAN_OP = torch.ops.svs._reconstruct_plan.default


def _plan(out_dtype: torch.dtype, op_dtype: torch.dtype):
    """(stage mode, GEMM input precision, NSEG) for an output and operand dtype."""
    if op_dtype == torch.float64:
        return stage.COPY, "ieee", 1
    if out_dtype in (torch.float32, torch.float64):
        return stage.SPLIT, "tf32", 3
    return stage.TF32, "tf32", 1


# _plan by dtype indices, and the workspace planes per factor it implies (the plan's `planes`)
_PLANS = {(op, out): _plan(DTYPES[out], DTYPES[op]) for op in _OPERANDS for out in range(len(DTYPES))}
_PLANES = [stage.PLANES[_PLANS[op, out][0]] for op in _OPERANDS for out in range(len(DTYPES))]


def reconstruct(u: Sequence[torch.Tensor], s: Sequence[torch.Tensor], vh: Sequence[torch.Tensor],
                out: Sequence[torch.Tensor], map: Union[str, int] = "sqrt", power: float = 1.0) -> None:
    """out[i] = U_i diag(f(s_i)) Vh_i for every i (the contract of svs::_reconstruct).

    U_i (m_i, k_i), s_i (k_i,), Vh_i (k_i, n_i), out[i] an (m_i, n_i) view (any strides) of the
    final output, any float dtypes. map: a name, or a code of _maps.py with ``power``. f uses
    max(s_i) for spectral; s <= 0 maps to 0. out must not overlap u, s or vh.
    """
    code, power = parse_map(map) if isinstance(map, str) else (int(map), float(power))
    if not (0 <= code <= IDENTITY and math.isfinite(power)):
        raise RuntimeError(f"svs._reconstruct: map code {code} / power {power} out of range")
    device = out[0].device if len(out) else torch.device("cpu")
    if len(out):
        check_device(device, "out[0]")
    table, launches, relocs = _make_plan(u, s, vh, out, power, device)
    with device_ctx(device):
        _launch(table, launches, relocs, code, device)


def _make_plan(u, s, vh, out, power, device):
    """svs::_reconstruct_plan (the checks, then every table) under the workspace cap, which grows
    to a quarter of the free device memory where a dtype group needs more than WORKSPACE_BYTES."""
    tiles = [gemm.tiles(op) for op in _OPERANDS.values()]
    args = (u, s, vh, out, power, *tiles, _PLANES, num_programs(device), stage.BLOCK_R, stage.BLOCK_C)
    table, launches, relocs = _PLAN_OP(*args, WORKSPACE_BYTES)
    launches = launches.tolist()
    if device.type == "cuda" and any(r[0] == CHUNK and r[9] > WORKSPACE_BYTES for r in launches):
        cap = torch.cuda.mem_get_info(device)[0] // 4
        if cap > WORKSPACE_BYTES:
            table, launches, relocs = _PLAN_OP(*args, cap)
            launches = launches.tolist()
    return table, launches, relocs


def _launch(table: torch.Tensor, launches: List[List[int]], relocs: torch.Tensor, code: int, device) -> None:
    """Per chunk: its workspace, its table on the device (workspace offsets relocated to
    addresses, one host-to-device copy), then the map, stage and GEMM launches."""
    cells, rel = table.numpy(), relocs.numpy()
    done = 0
    for kind, at, count, *a in launches:
        if kind == CHUNK:
            end, elements, op, s_dt, fs_at, rel_end, _ = a
            work = torch.empty(elements, dtype=DTYPES[op], device=device)
            cells[rel[done:rel_end]] += work.data_ptr()
            done, base = rel_end, at
            tab = to_device(table[at:end], device)
            launch_map(tab, work[fs_at:], DTYPES[s_dt], code, count)
        elif kind == STAGE:
            src, op, layout, out_dt, programs = a[:5]
            stage.launch(tab[at - base:], count, TL_DTYPE[DTYPES[src]], TL_DTYPE[DTYPES[op]], layout,
                         _PLANS[op, out_dt][0], programs)
        else:  # GEMM
            config, op, out_dt, aligned, programs = a[:5]
            _, precision, nseg = _PLANS[op, out_dt]
            gemm.launch(tab[at - base:], count, gemm.candidates(_OPERANDS[op])[config], TL_DTYPE[DTYPES[op]],
                        TL_DTYPE[DTYPES[out_dt]], precision, nseg, bool(aligned), programs)


def launch_kinds() -> List[tuple]:
    """(operand dtype, out dtype, stage mode, precision, NSEG) of every launch reconstruct can make."""
    kinds = []
    for op_dt in (torch.float32, torch.float64):
        for out_dt in TL_DTYPE:
            kinds.append((op_dt, out_dt) + _plan(out_dt, op_dt))
    return kinds
