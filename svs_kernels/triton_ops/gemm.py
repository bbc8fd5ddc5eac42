"""The grouped GEMM kernel: out_i = A_i B_i for every matrix of a call, from the staged workspace.

A_i (= U_i diag(f(s_i)), (mp, kp) row-major) and B_i (= Vh_i, (kp, np) row-major) come from the
staging kernel, padded with zeros to the tile multiples and aligned: every load is unmasked and
vectorised, whatever the matrix shapes. NSEG = 3 runs the 3xTF32 product as three plain K loops
over (lo_A, hi_B), (hi_A, lo_B), (hi_A, hi_B) into one accumulator: tensor-core work only. Persistent grid: min(#tiles, SM count) programs stride over the tiles of all
matrices (grouped-GEMM pattern; GROUP_M row blocks share B in L2).

The output is the only operand with arbitrary shapes and strides: matrices whose output is
row-major, 16-byte aligned and a tile multiple go in an ALIGNED launch (unmasked vector stores),
the rest in a general one (masked stores, runtime strides).

The config comes from a shape rule (:func:`choose_config`; the reconstruction's plan applies it to
:func:`candidates`), not the autotuner: a user's first call compiles one kernel per launch kind and
runs it once (benchmarks/tune_reconstruct.py compares the rule with the autotuner's choice on a GPU).
"""
from typing import List, NamedTuple, Sequence, Tuple

import torch
import triton
import triton.language as tl

from . import _layout
from .common import INTERPRETING, cvt

ROW = tl.constexpr(_layout.GEMM_ROW)  # int64 fields per matrix (csrc/launch_table.cpp's layout)


@triton.jit
def _k_loop(acc, a_ptrs, b_ptrs, kt, n_p, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += A B over kt BLOCK_K steps: unmasked loads, one tensor-core dot per step."""
    for kk in range(0, kt):
        acc = tl.dot(tl.load(a_ptrs + kk * BLOCK_K), tl.load(b_ptrs + kk * BLOCK_K * n_p), acc,
                     input_precision=PRECISION, out_dtype=acc.dtype)
    return acc


# Table per matrix, ROW fields: [a_ptr, b_ptr, out_ptr, m, n, kp, out_s0, out_s1, a_lo_off, b_lo_off]
# (offsets and strides in elements; kp a multiple of BLOCK_K, B's row stride np = tiles_n * BLOCK_N).
@triton.jit
def _gemm_kernel(tab_ptr, G, OP_DT: tl.constexpr, OUT_DT: tl.constexpr, PRECISION: tl.constexpr,
                 NSEG: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    tile = tl.program_id(0)
    step = tl.num_programs(0)
    tiles_before = 0
    for g in range(G):
        row = tab_ptr + g * ROW
        m = tl.load(row + 3).to(tl.int32)
        n = tl.load(row + 4).to(tl.int32)
        tiles_m = tl.cdiv(m, BLOCK_M)
        tiles_n = tl.cdiv(n, BLOCK_N)
        ntiles = tiles_m * tiles_n
        while tile >= tiles_before and tile < tiles_before + ntiles:
            local = tile - tiles_before
            per_group = GROUP_M * tiles_n
            first_m = (local // per_group) * GROUP_M
            group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
            tm = first_m + (local % per_group) % group_rows
            tn = (local % per_group) // group_rows

            a_base = tl.multiple_of(tl.load(row).to(tl.pointer_type(OP_DT)), 16)
            b_base = tl.multiple_of(tl.load(row + 1).to(tl.pointer_type(OP_DT)), 16)
            out_base = tl.load(row + 2).to(tl.pointer_type(OUT_DT))
            kp = tl.multiple_of(tl.load(row + 5).to(tl.int32), BLOCK_K)
            n_p = tl.multiple_of(tiles_n * BLOCK_N, BLOCK_N)
            rm = tm * BLOCK_M + tl.arange(0, BLOCK_M)
            rn = tn * BLOCK_N + tl.arange(0, BLOCK_N)
            rk = tl.arange(0, BLOCK_K)
            a_ptrs = a_base + rm[:, None] * kp + rk[None, :]
            b_ptrs = b_base + rk[:, None] * n_p + rn[None, :]
            kt = kp // BLOCK_K
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=OP_DT)
            if NSEG == 3:  # small terms first: (lo_A, hi_B), (hi_A, lo_B), then (hi_A, hi_B)
                acc = _k_loop(acc, a_ptrs + tl.load(row + 8), b_ptrs, kt, n_p, PRECISION, BLOCK_K)
                acc = _k_loop(acc, a_ptrs, b_ptrs + tl.load(row + 9), kt, n_p, PRECISION, BLOCK_K)
            acc = _k_loop(acc, a_ptrs, b_ptrs, kt, n_p, PRECISION, BLOCK_K)

            if ALIGNED:  # row-major, 16-byte aligned base and row stride, a tile multiple
                out_base = tl.multiple_of(out_base, 16)
                out_s0 = tl.multiple_of(tl.load(row + 6), 128 // OUT_DT.primitive_bitwidth)
                tl.store(out_base + rm[:, None] * out_s0 + rn[None, :], cvt(acc, OUT_DT))
            else:
                out_ptrs = out_base + rm[:, None] * tl.load(row + 6) + rn[None, :] * tl.load(row + 7)
                tl.store(out_ptrs, cvt(acc, OUT_DT), mask=(rm[:, None] < m) & (rn[None, :] < n))
            tile += step
        tiles_before += ntiles


class Config(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int


# Candidate tiles per operand dtype, largest first. float32 operands run TF32 tensor cores
# (wgmma on sm_90); float64 runs DMMA (mma.sync), whose 128-wide tiles spill. Spill-free on sm_90
# with the pinned triton and triton 3.6: tests/svs_kernels/test_triton_compile.py.
CONFIGS = {
    "float32": (Config(128, 128, 32, 8, 8, 3), Config(64, 128, 32, 8, 8, 3), Config(64, 64, 32, 8, 4, 4),
                Config(32, 64, 32, 4, 4, 4)),
    "float64": (Config(64, 64, 16, 8, 4, 3), Config(32, 64, 16, 4, 4, 2)),
}
INTERPRETER_CONFIG = Config(32, 32, 16, 2, 4, 1)  # small: many tiles (masks, the persistent loop)


def candidates(op_dtype: str) -> Tuple[Config, ...]:
    """The configs the shape rule picks from for an operand dtype, largest first (the interpreter
    has its one small config)."""
    return (INTERPRETER_CONFIG,) if INTERPRETING else CONFIGS[op_dtype]


def choose_config(op_dtype: str, m: Sequence[int], n: Sequence[int], programs: int) -> Config:
    """The config of the shape rule (csrc/launch_table.cpp, which the reconstruction's plan runs):
    the largest tile that is not larger than every matrix (next power of two of the largest m and
    n) and still gives every program a tile; else the smallest candidate that fits."""
    pick = torch.ops.svs._gemm_config([int(x) for x in m], [int(x) for x in n], tiles(op_dtype), programs)
    return candidates(op_dtype)[pick]


def tiles(op_dtype: str) -> List[int]:
    """(block_m, block_n, block_k) of every candidate, flat: what the C++ rule reads."""
    return [x for c in candidates(op_dtype) for x in (c.block_m, c.block_n, c.block_k)]


def launch(tab, G: int, c: Config, op_dt, out_dt, precision: str, nseg: int, aligned: bool, programs: int) -> None:
    """One GEMM launch over G matrices of tab (device int64, ROW fields each)."""
    _gemm_kernel[(programs,)](tab, G, OP_DT=op_dt, OUT_DT=out_dt, PRECISION=precision, NSEG=nseg, ALIGNED=aligned,
                              BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_K=c.block_k, GROUP_M=c.group_m,
                              num_warps=c.num_warps, num_stages=c.num_stages)

