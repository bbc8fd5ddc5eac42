"""The sigma-map kernel: f(s) of many singular-value vectors into one packed buffer, one launch.

f is evaluated in float64 (log1p, abslog and power need it for 1e-7 accuracy in float32 results)
and rounded once to the buffer's dtype. Grid: one program per vector; spectral reads its vector
twice (the max first).
"""
import torch
import triton
import triton.language as tl

from . import _layout
from .common import INTERPRETING, SPECTRAL, TL_DTYPE, cvt, map_values

ROW = tl.constexpr(_layout.MAP_ROW)  # int64 fields per row (csrc/launch_table.cpp's layout)


# Table (svs::_reconstruct_plan builds it), ROW fields a row: a header [power as float64 bits, 0, 0, 0],
# then per vector [s data_ptr, length, stride (elements), offset of its first value in the packed output].
@triton.jit
def _sigma_map_kernel(tab_ptr, out_ptr, S_DT: tl.constexpr, MAP: tl.constexpr, BLOCK: tl.constexpr):
    g = tl.program_id(0)
    power = tl.load(tab_ptr).to(tl.float64, bitcast=True)
    row = tab_ptr + (g + 1) * ROW
    s_base = tl.load(row).to(tl.pointer_type(S_DT))
    n = tl.load(row + 1)
    stride = tl.load(row + 2)
    first = tl.load(row + 3)
    offs = tl.arange(0, BLOCK)
    s_max = tl.max(tl.zeros((BLOCK,), tl.float64), 0)
    if MAP == SPECTRAL:  # max over the whole vector first
        for start in range(0, n, BLOCK):
            idx = start + offs
            v = cvt(tl.load(s_base + idx * stride, mask=idx < n, other=0.0), tl.float64)
            s_max = tl.maximum(s_max, tl.max(v, 0))
    for start in range(0, n, BLOCK):
        idx = start + offs
        v = cvt(tl.load(s_base + idx * stride, mask=idx < n, other=0.0), tl.float64)
        f = map_values(v, s_max, power, MAP)
        tl.store(out_ptr + first + idx, cvt(f, out_ptr.dtype.element_ty), mask=idx < n)


BLOCK = 64 if INTERPRETING else 256


def launch_map(tab: torch.Tensor, out: torch.Tensor, s_dtype: torch.dtype, code: int, count: int) -> None:
    """f(s) of the count vectors of tab (device int64: the header, then ROW fields a vector) into out,
    each at its offset: one program per vector. code: a map code of _maps.CODES."""
    if count:
        _sigma_map_kernel[(count,)](tab, out, S_DT=TL_DTYPE[s_dtype], MAP=code, BLOCK=BLOCK, enable_fp_fusion=True)
