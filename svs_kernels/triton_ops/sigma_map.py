"""The sigma-map kernel: f(s) of many singular-value vectors into one packed buffer, one launch.

f is evaluated in float64 (log1p, abslog and power need it for 1e-7 accuracy in float32 results)
and rounded once to the buffer's dtype. Grid: one program per vector; spectral reads its vector
twice (the max first).
"""
from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ._maps import parse_map
from .common import INTERPRETING, TL_DTYPE, check_device, cvt, device_ctx, f64_bits, map_values, table


# Table: a header row [power as float64 bits, 0, 0, 0], then per vector
# [s data_ptr, length, stride (elements), offset of its first value in the packed output].
@triton.jit
def _sigma_map_kernel(tab_ptr, out_ptr, S_DT: tl.constexpr, MAP: tl.constexpr, BLOCK: tl.constexpr):
    g = tl.program_id(0)
    power = tl.load(tab_ptr).to(tl.float64, bitcast=True)
    row = tab_ptr + (g + 1) * 4
    s_base = tl.load(row).to(tl.pointer_type(S_DT))
    n = tl.load(row + 1)
    stride = tl.load(row + 2)
    first = tl.load(row + 3)
    offs = tl.arange(0, BLOCK)
    s_max = tl.max(tl.zeros((BLOCK,), tl.float64), 0)
    if MAP == 5:  # spectral: max over the whole vector first
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


def map_rows(power: float, vectors: Sequence[Tuple[int, int, int]]) -> Tuple[List[int], int]:
    """Table rows for (data_ptr, length, stride) vectors packed back to back; returns (rows, total)."""
    rows = [f64_bits(power), 0, 0, 0]
    total = 0
    for ptr, n, stride in vectors:
        rows += [ptr, n, stride, total]
        total += n
    return rows, total


def launch_map(tab: torch.Tensor, out: torch.Tensor, s_dtype: torch.dtype, code: int, count: int) -> None:
    if count:
        _sigma_map_kernel[(count,)](tab, out, S_DT=TL_DTYPE[s_dtype], MAP=code, BLOCK=BLOCK, enable_fp_fusion=True)


def sigma_map(s: torch.Tensor, offsets: torch.Tensor, map: str = "sqrt",
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """f applied to a packed buffer of singular values: s[offsets[i]:offsets[i+1]] is matrix i's.

    One launch for all matrices. s: 1-D float tensor; offsets: G+1 nondecreasing int offsets (read on
    the host). Returns (or fills) a tensor like s. Entries s <= 0 map to 0; spectral divides by
    each matrix's own largest value.
    """
    code, power = parse_map(map)
    if s.dim() != 1:
        raise RuntimeError(f"svs.sigma_map: s must be 1-D (packed), got shape {tuple(s.shape)}")
    if s.dtype not in TL_DTYPE:
        raise RuntimeError(f"svs.sigma_map: s has dtype {s.dtype}; expected a float dtype")
    check_device(s.device, "s")
    offs = [int(o) for o in torch.as_tensor(offsets).tolist()]
    if len(offs) < 1 or offs[0] != 0 or offs[-1] != s.numel() or any(b < a for a, b in zip(offs, offs[1:])):
        raise RuntimeError(f"svs.sigma_map: offsets must run from 0 to {s.numel()} without decreasing, got {offs}")
    if out is None:
        out = torch.empty_like(s, memory_format=torch.contiguous_format)
    elif out.shape != s.shape or not out.is_contiguous() or out.dtype not in TL_DTYPE or out.device != s.device:
        raise RuntimeError("svs.sigma_map: out must be a contiguous float tensor shaped like s on s's device")
    if s.numel() == 0:
        return out
    es, st = s.element_size(), s.stride(0)
    rows, _ = map_rows(power, [(s.data_ptr() + a * st * es, b - a, st) for a, b in zip(offs, offs[1:])])
    with device_ctx(s.device):
        launch_map(table(rows, s.device), out, s.dtype, code, len(offs) - 1)
    return out
