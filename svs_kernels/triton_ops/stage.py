"""The staging kernel: copies U diag(f(s)) and Vh of many matrices into a padded row-major
workspace, rounded for the tensor cores, so the GEMM's main loop is plain unmasked tensor-core work.

Per operand (a "job") it writes ``planes`` (rows_p, cols_p) row-major planes, rows_p and cols_p
the GEMM tile multiples, zeros in the padding, in one of three modes:
  COPY   the value in the compute dtype (float64, or float32 for the "ieee" GEMM)
  TF32   the value rounded to TF32 (round to nearest): one TF32 product per term
  SPLIT  hi = tf32(x) and lo = tf32(x - hi) in two planes: x = hi + lo + r, |r| <= 2^-22 |x|,
         so hi*hi + hi*lo + lo*hi is a float32-accurate product (3xTF32)
The split happens once per operand element here, not once per tile of the GEMM.
"""
import triton
import triton.language as tl

from . import _layout
from .common import INTERPRETING, cvt, round_tf32

COPY, TF32, SPLIT = 0, 1, 2
PLANES = {COPY: 1, TF32: 1, SPLIT: 2}
# From csrc/launch_table.cpp's layout: int64 fields per job, and the LAYOUT codes.
ROW = tl.constexpr(_layout.STAGE_ROW)
ROW_MAJOR, COL_MAJOR = tl.constexpr(_layout.ROW_MAJOR), tl.constexpr(_layout.COL_MAJOR)


# Table per job, ROW fields: [src_ptr, fs_ptr (0: no scaling), dst_ptr, rows, cols, src_s0, src_s1,
# rows_p, cols_p, lo_off]; src strides and lo_off (hi plane to lo plane) in elements. LAYOUT:
# ROW_MAJOR if every source has unit stride along dim 1, COL_MAJOR along dim 0, else general (a
# compile-time unit stride lets the loads vectorise and coalesce along it).
@triton.jit
def _stage_kernel(tab_ptr, G, SRC_DT: tl.constexpr, DST_DT: tl.constexpr, LAYOUT: tl.constexpr,
                  MODE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    tile = tl.program_id(0)
    step = tl.num_programs(0)
    tiles_before = 0
    for g in range(G):
        row = tab_ptr + g * ROW
        rows_p = tl.load(row + 7).to(tl.int32)
        cols_p = tl.load(row + 8).to(tl.int32)
        tiles_c = tl.cdiv(cols_p, BLOCK_C)
        ntiles = tl.cdiv(rows_p, BLOCK_R) * tiles_c
        while tile >= tiles_before and tile < tiles_before + ntiles:
            local = tile - tiles_before
            src = tl.load(row).to(tl.pointer_type(SRC_DT))
            fs_ptr = tl.load(row + 1)
            dst = tl.load(row + 2).to(tl.pointer_type(DST_DT))
            nr = tl.load(row + 3).to(tl.int32)
            nc = tl.load(row + 4).to(tl.int32)
            if LAYOUT == ROW_MAJOR:
                s0 = tl.load(row + 5)
                s1 = 1
            elif LAYOUT == COL_MAJOR:
                s0 = 1
                s1 = tl.load(row + 6)
            else:
                s0 = tl.load(row + 5)
                s1 = tl.load(row + 6)
            r = (local // tiles_c) * BLOCK_R + tl.arange(0, BLOCK_R)
            c = (local % tiles_c) * BLOCK_C + tl.arange(0, BLOCK_C)
            inside = (r[:, None] < nr) & (c[None, :] < nc)
            x = cvt(tl.load(src + r[:, None] * s0 + c[None, :] * s1, mask=inside, other=0.0), DST_DT)
            fs_len = tl.where(fs_ptr != 0, nc, 0)  # no f(s) (Vh): scale by 1
            fs = tl.load(fs_ptr.to(tl.pointer_type(DST_DT)) + c, mask=c < fs_len, other=1.0)
            x = x * fs[None, :]
            d = dst + r[:, None] * cols_p + c[None, :]
            keep = (r[:, None] < rows_p) & (c[None, :] < cols_p)
            if MODE == 0:
                tl.store(d, x, mask=keep)
            elif MODE == 1:
                tl.store(d, round_tf32(x), mask=keep)
            else:
                hi = round_tf32(x)
                tl.store(d, hi, mask=keep)
                tl.store(d + tl.load(row + 9), round_tf32(x - hi), mask=keep)  # x - hi is exact
            tile += step
        tiles_before += ntiles


BLOCK_R, BLOCK_C = (16, 32) if INTERPRETING else (32, 64)


def launch(tab, G: int, src_dt, dst_dt, layout: int, mode: int, programs: int) -> None:
    """One staging launch over G jobs of tab (device int64, ROW fields each), persistent grid."""
    _stage_kernel[(programs,)](tab, G, SRC_DT=src_dt, DST_DT=dst_dt, LAYOUT=layout, MODE=mode,
                               BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, num_warps=4)
