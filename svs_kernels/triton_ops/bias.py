"""The bias-rule kernel: b / sqrt(||b||_2 + eps) for every bias, in float64, one program per bias."""
import math
from typing import Dict, List, Optional, Sequence

import torch
import triton
import triton.language as tl

from .common import INTERPRETING, TL_DTYPE, check_device, cvt, device_ctx, f64_bits, table


# Table: a header row [eps as float64 bits, 0, 0, 0, 0], then per bias
# [in data_ptr, out data_ptr, length, in stride, out stride].
@triton.jit
def _bias_kernel(tab_ptr, IN_DT: tl.constexpr, OUT_DT: tl.constexpr, BLOCK: tl.constexpr):
    g = tl.program_id(0)
    eps = tl.load(tab_ptr).to(tl.float64, bitcast=True)
    row = tab_ptr + (g + 1) * 5
    src = tl.load(row).to(tl.pointer_type(IN_DT))
    dst = tl.load(row + 1).to(tl.pointer_type(OUT_DT))
    n = tl.load(row + 2)
    s_in = tl.load(row + 3)
    s_out = tl.load(row + 4)
    offs = tl.arange(0, BLOCK)
    sq = tl.zeros((BLOCK,), tl.float64)
    for start in range(0, n, BLOCK):
        idx = start + offs
        v = cvt(tl.load(src + idx * s_in, mask=idx < n, other=0.0), tl.float64)
        sq += v * v
    denom = tl.sqrt(tl.sqrt(tl.sum(sq, 0)) + eps)  # float64: correctly rounded
    # The second pass re-reads the input: in place (dst == src) is safe, each element is read
    # before its own write and no other element depends on it.
    for start in range(0, n, BLOCK):
        idx = start + offs
        v = cvt(tl.load(src + idx * s_in, mask=idx < n, other=0.0), tl.float64)
        tl.store(dst + idx * s_out, cvt(v / denom, OUT_DT), mask=idx < n)


BLOCK = 128 if INTERPRETING else 1024


def scale_biases(biases: Sequence[torch.Tensor], eps: float = 1e-8,
                 out: Optional[Sequence[torch.Tensor]] = None) -> List[torch.Tensor]:
    """b / sqrt(||b||_2 + eps) for every 1-D bias, computed in float64, in one launch per dtype pair.

    Returns new contiguous tensors, or fills ``out`` (same shapes; out[i] may be biases[i] itself).
    A zero bias stays zero.
    """
    if not (math.isfinite(eps) and eps > 0):
        raise RuntimeError(f"svs.refine: eps must be finite and > 0, got {eps}")
    if out is None:
        out = [torch.empty_like(b, memory_format=torch.contiguous_format) for b in biases]
    if len(out) != len(biases):
        raise RuntimeError("svs.scale_biases: biases and out must have the same length")
    groups: Dict[tuple, List[int]] = {}
    for i, (b, o) in enumerate(zip(biases, out)):
        if b.dim() != 1 or o.shape != b.shape:
            raise RuntimeError(f"svs.scale_biases: biases[{i}] must be 1-D and out[{i}] shaped like it, got "
                               f"{tuple(b.shape)} and {tuple(o.shape)}")
        if b.dtype not in TL_DTYPE or o.dtype not in TL_DTYPE:
            raise RuntimeError(f"svs.scale_biases: biases[{i}]/out[{i}] must have a float dtype")
        if b.numel() == 0:
            continue
        check_device(b.device, f"biases[{i}]")
        check_device(o.device, f"out[{i}]")
        groups.setdefault((b.dtype, o.dtype, b.device), []).append(i)
    for (in_dt, out_dt, device), idx in groups.items():
        rows = [f64_bits(eps), 0, 0, 0, 0]
        for i in idx:
            b, o = biases[i], out[i]
            rows += [b.data_ptr(), o.data_ptr(), b.numel(), b.stride(0), o.stride(0)]
        with device_ctx(device):
            _bias_kernel[(len(idx),)](table(rows, device), IN_DT=TL_DTYPE[in_dt], OUT_DT=TL_DTYPE[out_dt],
                                      BLOCK=BLOCK, enable_fp_fusion=True)
    return list(out)
