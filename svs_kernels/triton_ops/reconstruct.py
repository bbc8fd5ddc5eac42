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
plus the rounding of the stored value. tests/test_triton.py checks each bound, emulating the
tensor-core rounding in the reference.
"""
import itertools
import math
from operator import attrgetter
from typing import List, Sequence, Union

import numpy as np
import torch

from . import gemm, stage
from ._maps import IDENTITY, parse_map
from .common import TL_DTYPE, check_device, device_ctx, f64_bits, num_programs, to_device
from .sigma_map import launch_map

# Workspace per chunk of matrices: at least this, or a quarter of the free device memory (one
# matrix larger than that gets a chunk of its own).
WORKSPACE_BYTES = 1 << 30

# Columns of the per-matrix metadata: sizes, data_ptr and strides (elements) of the operands, then
# (filled per launch group) padded sizes, plane sizes, workspace pointers.
(M, N, K, U_PTR, U_S0, U_S1, S_PTR, S_S, V_PTR, V_S0, V_S1, O_PTR, O_S0, O_S1,
 MP, NP, KP, A_LO, B_LO, A_PTR, B_PTR, FS_PTR, ZERO) = range(23)
_COLS = O_S1 + 1
U_JOB = [U_PTR, FS_PTR, A_PTR, M, K, U_S0, U_S1, MP, KP, A_LO]  # stage.py's table rows
V_JOB = [V_PTR, ZERO, B_PTR, K, N, V_S0, V_S1, KP, NP, B_LO]
GEMM_ROW = [A_PTR, B_PTR, O_PTR, M, N, KP, O_S0, O_S1, A_LO, B_LO]  # gemm.py's table rows

_T = torch.Tensor
_dtype = attrgetter("dtype")
_chain = itertools.chain.from_iterable
_each = map  # the builtin (reconstruct's argument is called map, as in the operator schema)


def _plan(out_dtype: torch.dtype, op_dtype: torch.dtype):
    """(stage mode, GEMM input precision, NSEG) for an output and operand dtype."""
    if op_dtype == torch.float64:
        return stage.COPY, "ieee", 1
    if out_dtype in (torch.float32, torch.float64):
        return stage.SPLIT, "tf32", 3
    return stage.TF32, "tf32", 1


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
    G = len(out)
    if not (len(u) == len(s) == len(vh) == G):
        raise RuntimeError("svs._reconstruct: u, s, vh and out must have the same length")
    if G == 0:
        return
    device = out[0].device
    check_device(device, "out[0]")
    dev = out[0].get_device()
    lists = (("u", u), ("s", s), ("vh", vh), ("out", out))
    for what, ts in lists:
        if set(_each(_T.get_device, ts)) != {dev}:
            i = next(i for i, t in enumerate(ts) if t.get_device() != dev)
            raise RuntimeError(f"svs._reconstruct: {what}[{i}] is on {ts[i].device} but out[0] is on {device}")
    # Metadata in bulk (one C call per tensor and attribute, then numpy): the host cost of a call
    # with hundreds of small matrices is otherwise larger than its GPU time.
    us, ss, vs, os_ = (_ints(_T.size, ts, w) for ts, w in zip((u, s, vh, out), (2, 1, 2, 2)))
    if any(x is None for x in (us, ss, vs, os_)) or not (
            (ss[:, 0] == us[:, 1]).all() and (vs[:, 0] == us[:, 1]).all() and (os_[:, 0] == us[:, 0]).all()
            and (os_[:, 1] == vs[:, 1]).all()):
        _shape_error(u, s, vh, out)
    dtypes = [list(_each(_dtype, ts)) for _, ts in lists]
    if all(len(set(d)) == 1 for d in dtypes):
        groups = {tuple(d[0] for d in dtypes): np.arange(G)}
    else:  # several dtype combinations: one set of launches each
        groups = {}
        for i, key in enumerate(zip(*dtypes)):
            groups.setdefault(key, []).append(i)
    for key, idx in groups.items():
        for what, dt in zip(("u", "s", "vh", "out"), key):
            if dt not in TL_DTYPE:
                raise RuntimeError(f"svs._reconstruct: {what}[{int(idx[0])}] has dtype {dt}; expected a float dtype")
    m, k, n = us[:, 0], us[:, 1], vs[:, 1]
    if max(m.max(), n.max(), k.max()) >= 2**31:
        raise RuntimeError("svs._reconstruct: a matrix has a dimension >= 2^31")
    meta = np.empty((G, _COLS), np.int64)
    meta[:, [M, K]], meta[:, N] = us, vs[:, 1]
    for (_, ts), (ptr, *stride) in zip(lists, ((U_PTR, U_S0, U_S1), (S_PTR, S_S), (V_PTR, V_S0, V_S1),
                                               (O_PTR, O_S0, O_S1))):
        meta[:, ptr] = np.fromiter(_each(_T.data_ptr, ts), np.int64, G)
        meta[:, stride] = _ints(_T.stride, ts, len(stride))
    with device_ctx(device):
        for (u_dt, s_dt, vh_dt, out_dt), idx in groups.items():
            rows = meta[idx]
            rows = rows[(rows[:, M] > 0) & (rows[:, N] > 0)]  # nothing to write otherwise
            if len(rows):
                _run(rows, (u_dt, s_dt, vh_dt, out_dt), code, power, device)


def _ints(fn, ts, width: int):
    """fn(t) (a tuple of ints) of every tensor as a (len(ts), width) int64 array; None if some
    tuple has another length (a tensor with the wrong number of dimensions)."""
    vals = list(_each(fn, ts))
    if set(_each(len, vals)) != {width}:
        return None
    return np.fromiter(_chain(vals), np.int64, len(vals) * width).reshape(-1, width)


def _shape_error(u, s, vh, out):
    for i, (ui, si, vi, oi) in enumerate(zip(u, s, vh, out)):
        ush, ssh, vsh, osh = ui.shape, si.shape, vi.shape, oi.shape
        if len(ush) != 2 or len(ssh) != 1 or len(vsh) != 2 or len(osh) != 2:
            raise RuntimeError(
                f"svs._reconstruct: matrix {i}: expected u 2-D, s 1-D, vh 2-D, out 2-D, got shapes "
                f"{tuple(ush)}, {tuple(ssh)}, {tuple(vsh)}, {tuple(osh)}")
        if ssh[0] != ush[1] or vsh[0] != ush[1] or osh[0] != ush[0] or osh[1] != vsh[1]:
            raise RuntimeError(
                f"svs._reconstruct: matrix {i}: shapes u {tuple(ush)}, s {tuple(ssh)}, vh "
                f"{tuple(vsh)}, out {tuple(osh)} do not fit u (m, k), s (k,), vh (k, n), out (m, n)")
    raise AssertionError("unreachable: the vectorised shape check failed but no matrix is wrong")


def _run(meta, dts, code, power, device) -> None:
    """Map, stage and GEMM launches for the matrices (rows of meta) of one dtype combination, in
    chunks whose workspace fits the cap (see WORKSPACE_BYTES)."""
    u_dt, s_dt, vh_dt, out_dt = dts
    op_dt = torch.float64 if torch.float64 in (u_dt, vh_dt) else torch.float32
    mode, precision, nseg = _plan(out_dt, op_dt)
    programs = num_programs(device)
    c = gemm.choose_config(str(op_dt).split(".")[1], meta[:, M], meta[:, N], programs)
    padded = -(-meta[:, [M, N, K]] // (c.block_m, c.block_n, c.block_k)) * (c.block_m, c.block_n, c.block_k)
    meta = np.column_stack([meta, padded, padded[:, 0] * padded[:, 2], padded[:, 2] * padded[:, 1],
                            np.zeros((len(meta), 4), np.int64)])
    if max(meta[:, A_LO].max(), meta[:, B_LO].max()) >= 2**31:  # the kernels' tile offsets are int32
        raise RuntimeError("svs._reconstruct (Triton): a factor has 2^31 or more elements after padding")
    planes = stage.PLANES[mode]
    work = planes * (meta[:, A_LO] + meta[:, B_LO]) * op_dt.itemsize
    cap = WORKSPACE_BYTES
    if work.sum() > cap and device.type == "cuda":
        cap = max(cap, torch.cuda.mem_get_info(device)[0] // 4)
    if work.sum() <= cap:
        chunks = [meta]
    else:
        starts, total = [0], 0
        for i, w in enumerate(work.tolist()):
            if total and total + w > cap:
                starts.append(i)
                total = 0
            total += w
        chunks = [meta[a:b] for a, b in zip(starts, starts[1:] + [len(meta)])]
    for rows in chunks:
        _run_chunk(rows, dts, op_dt, mode, planes, precision, nseg, c, code, power, device, programs)


def _run_chunk(meta, dts, op_dt, mode, planes, precision, nseg, c, code, power, device, programs) -> None:
    u_dt, s_dt, vh_dt, out_dt = dts
    G, es = len(meta), op_dt.itemsize
    # workspace (elements): the A planes of every matrix, then the B planes, then f(s) packed
    sizes = np.concatenate([planes * meta[:, A_LO], planes * meta[:, B_LO], meta[:, K]])
    starts = np.cumsum(sizes) - sizes
    work = torch.empty(int(starts[-1] + sizes[-1]) + 1, dtype=op_dt, device=device)
    meta[:, [A_PTR, B_PTR, FS_PTR]] = work.data_ptr() + starts.reshape(3, G).T * es
    fs_at = int(starts[2 * G])

    # the tables of every launch, one host-to-device copy
    parts = [np.array([f64_bits(power), 0, 0, 0], np.int64),  # sigma_map.py's header and rows
             np.column_stack([meta[:, [S_PTR, K, S_S]], starts[2 * G:] - fs_at]).ravel()]
    at = sum(p.size for p in parts)
    launches = []

    def add(rows):
        nonlocal at
        parts.append(rows.ravel())
        at += rows.size
        return at - rows.size

    src = {U_PTR: u_dt, V_PTR: vh_dt}
    for cols, rc in ((U_JOB, (M, K)), (V_JOB, (K, N))):
        jobs = meta[:, cols]
        lay = stage.layouts(jobs[:, 5], jobs[:, 6], meta[:, rc[0]], meta[:, rc[1]])
        for layout in (1, 2, 0):
            pick = lay == layout
            if pick.any():
                r = jobs[pick]
                launches.append((stage.launch, add(r), len(r), TL_DTYPE[src[cols[0]]], TL_DTYPE[op_dt], layout, mode,
                                 max(1, min(programs * 8, stage.tiles(r[:, 7], r[:, 8])))))
    o_es = out_dt.itemsize
    aligned = ((meta[:, O_S1] == 1) & (meta[:, O_PTR] % 16 == 0) & ((meta[:, O_S0] * o_es) % 16 == 0)
               & (meta[:, M] % c.block_m == 0) & (meta[:, N] % c.block_n == 0))
    for al in (True, False):
        pick = aligned == al
        if pick.any():
            r = meta[pick]
            launches.append((gemm.launch, add(r[:, GEMM_ROW]), len(r), c, TL_DTYPE[op_dt], TL_DTYPE[out_dt], precision,
                             nseg, al, max(1, min(programs, gemm.tile_count(c, r[:, M], r[:, N])))))
    tab = to_device(torch.from_numpy(np.concatenate(parts)), device)
    launch_map(tab, work[fs_at:], s_dt, code, G)
    for fn, at_, *args in launches:
        fn(tab[at_:], *args)


def launch_kinds() -> List[tuple]:
    """(operand dtype, out dtype, stage mode, precision, NSEG) of every launch reconstruct can make."""
    kinds = []
    for op_dt in (torch.float32, torch.float64):
        for out_dt in TL_DTYPE:
            kinds.append((op_dt, out_dt) + _plan(out_dt, op_dt))
    return kinds
