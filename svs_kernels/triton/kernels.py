"""Triton kernels of svs-kernels: sigma-map, grouped reconstruction, bias rule.

Every kernel handles all matrices (or biases) of a call in one launch. They address the tensors
through a pointer table: an int64 tensor with, per matrix, the data_ptr of each operand and its
sizes and strides, which the kernel casts back to typed pointers (``int.to(tl.pointer_type(T))``).
That works compiled for the GPU and under the interpreter (``TRITON_INTERPRET=1``) on CPU tensors:
there, int->pointer is a bitcast and loads/stores dereference the raw host addresses, so the tables
must hold CPU addresses (the launchers refuse CUDA tensors under the interpreter, whose argument
copies to the host would leave device addresses in the table).

Kernels
  _sigma_map_kernel         f(s) for many s vectors of different lengths into one packed buffer
                            (grid: one program per vector; spectral reads its vector twice).
  _grouped_reconstruct_kernel
                            out_i = U_i diag(f(s_i)) Vh_i for every i; persistent grid of
                            min(#SMs, #tiles) programs striding over the tiles of all matrices
                            (grouped-GEMM pattern), the sigma-map fused into the load of the U tile.
  _bias_kernel              b / sqrt(||b||_2 + eps) for every bias (one program per bias).

Precision: the sigma-maps with transcendental functions (log1p, abslog, power) and the bias rule
are evaluated in float64. The GEMM accumulates in float32 (float64 when U or Vh is float64).
"""
import functools
import math
import os
import struct
from typing import Dict, List, Optional, Sequence

import torch
import triton
import triton.language as tl

from ._maps import IDENTITY, ONES, SQRT, SQUARE, parse_map  # map codes: 0 sqrt ... 7 identity, as in _map_values

# ----------------------------------------------------------------------------------------------
# environment


def interpreting() -> bool:
    """Whether Triton runs under its CPU interpreter (TRITON_INTERPRET=1)."""
    try:
        return bool(triton.knobs.runtime.interpret)
    except AttributeError:  # older triton
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Read once: triton decides interpreter or compiler when it is imported (TRITON_INTERPRET).
_INTERPRETING = interpreting()

_TL_DTYPE = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}

# Input precision of the float32 GEMM. On the GPU, tl.dot on float32 operands defaults to TF32
# (10-bit mantissa, ~1e-3 relative error): not acceptable for the 1e-5 target. Candidates:
#   "ieee":   FMA-based float32 dot, exact products, accumulation error ~sqrt(k) * 6e-8 (random
#             signs); no tensor cores, so H100 peak is 67 TFLOP/s and Triton's FMA path reaches
#             well under that.
#   "tf32x3": each operand split as hi + lo (both TF32); hi*hi + hi*lo + lo*hi on tensor cores. The
#             dropped lo*lo term and the rounding of lo are ~2^-22 relative per product, so the
#             error is ~1e-6 relative (independent of k for random-sign errors) plus a float32
#             accumulation error no worse than "ieee"'s: estimated 1-3e-6 in total at k = 3072,
#             inside 1e-5 with margin, at up to 495/3 = 165 TFLOP/s of tensor-core rate.
#             (Estimate, not yet measured on a GPU: tests/test_triton.py::test_cuda_large_accuracy
#             and benchmarks/bench_reconstruct.py measure it against float64.)
# The reconstruction of the workloads is compute-bound (llm-8b-p: ~21 TFLOP for ~35 GB of traffic),
# so "tf32x3" is the default; callers (benchmarks/bench_reconstruct.py) can ask for "ieee".
# float64 operands always use "ieee" (the only float64 option).
DEFAULT_INPUT_PRECISION = "tf32x3"

# ----------------------------------------------------------------------------------------------
# the sigma-map


@triton.jit
def _sqrt_rn(x):
    # correctly rounded: tl.sqrt_rn exists for float32 only; float64 sqrt is correctly rounded anyway
    if x.dtype == tl.float32:
        r = tl.sqrt_rn(x)
    else:
        r = tl.sqrt(x)
    return r


@triton.jit
def _cvt(x, DT: tl.constexpr):
    """x.to(DT), but float64 <-> 16-bit float through float32: that is what torch does (c10::Half and
    c10::BFloat16 convert from float), and the interpreter's direct float64 <-> bfloat16 is wrong."""
    if x.dtype == tl.float64 and DT.primitive_bitwidth == 16:
        r = x.to(tl.float32).to(DT)
    elif x.dtype.primitive_bitwidth == 16 and DT == tl.float64:
        r = x.to(tl.float32).to(DT)
    else:
        r = x.to(DT)
    return r


@triton.jit
def _map_values(s, s_max, power, MAP: tl.constexpr):
    """f(s) elementwise in s's dtype; 0 wherever s <= 0 (no NaN/Inf in the discarded lanes)."""
    pos = s > 0
    safe = tl.where(pos, s, 1.0)  # keeps log/div finite where the result is discarded anyway
    if MAP == 0:  # sqrt
        f = _sqrt_rn(safe)
    elif MAP == 1:  # log1p, Goldberg's accurate form: log(u) * s / (u - 1) with u = 1 + s
        u = 1.0 + safe
        one = u == 1.0
        f = tl.where(one, safe, tl.log(u) * (safe / tl.where(one, 1.0, u - 1.0)))
    elif MAP == 2:  # abslog
        f = tl.abs(tl.log(safe))
    elif MAP == 3:  # power
        f = tl.exp(power * tl.log(safe))
    elif MAP == 4:  # ones
        f = tl.full(s.shape, 1.0, s.dtype)
    elif MAP == 5:  # spectral
        f = safe / tl.where(s_max > 0, s_max, 1.0)
    elif MAP == 6:  # square
        f = safe * safe
    else:  # identity
        f = safe
    return tl.where(pos, f, 0.0).to(s.dtype)


# Pointer table of the map kernel: a header row [power as float64 bits, 0, 0, 0], then per vector
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
            v = _cvt(tl.load(s_base + idx * stride, mask=idx < n, other=0.0), tl.float64)
            s_max = tl.maximum(s_max, tl.max(v, 0))
    for start in range(0, n, BLOCK):
        idx = start + offs
        v = _cvt(tl.load(s_base + idx * stride, mask=idx < n, other=0.0), tl.float64)
        f = _map_values(v, s_max, power, MAP)
        tl.store(out_ptr + first + idx, _cvt(f, out_ptr.dtype.element_ty), mask=idx < n)


# ----------------------------------------------------------------------------------------------
# grouped reconstruction

# Pointer table of the GEMM: per matrix
#   [u_ptr, s_ptr, vh_ptr, out_ptr, m, n, k, u_sm, u_sk, s_s, vh_sk, vh_sn, out_sm, out_sn, 0, 0]
# strides in elements.

# Layout codes of an operand (one per operand, for all matrices of a launch): 0 general strides,
# 1 unit stride along the second dimension (row-major), 2 unit stride along the first (column-major).
# A unit stride known at compile time lets Triton vectorise the loads/stores along that dimension.


def _gemm_configs():
    if _INTERPRETING:
        # One small config: many tiles (masks and the persistent loop get exercised), fast enough.
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 2, "PROGRAMS_PER_SM": 1},
                              num_warps=4, num_stages=1)]
    # A short list for the DESIGN.md section 5 workloads: DDPM (113 matrices, m <= 128, k <= 128,
    # n up to 2304): small tiles so that the few tiles there are fill the SMs; sd15 (m up to 1280,
    # n up to 23040) and llm-8b-p (3072/9216 squares and strips, k = 1024/3072): 128-wide tiles.
    # tf32x3 holds hi/lo copies of the register operand, so warps per tile are chosen to stay
    # spill-free: ptxas (sm_90a, Triton 3.9) reports 255/207/210/212/191 registers and no stack for
    # these; 128x64 with 4 warps, 128x128x64 and 256x128 spill. PROGRAMS_PER_SM sizes the persistent
    # grid: how many of these CTAs fit on one H100 SM by registers (64K) and shared memory (228 KB):
    # one of the 8-warp tiles (>= 207 registers x 256 threads), two of the 4-warp ones.
    def c(bm, bn, bk, group_m, per_sm, warps, stages):
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m,
                              "PROGRAMS_PER_SM": per_sm}, num_warps=warps, num_stages=stages)

    return [c(128, 128, 32, 8, 1, 8, 3), c(128, 64, 32, 8, 1, 8, 4), c(64, 128, 32, 8, 1, 8, 4),
            c(64, 64, 32, 8, 2, 4, 4), c(32, 64, 32, 4, 2, 4, 3)]


def _pow2_factor(x: int, cap: int) -> int:
    """Largest power of two dividing x, at most cap (x == 0: cap)."""
    x = int(x)
    return cap if x == 0 else min(cap, x & -x)


def _prune_configs(configs, named_args, **kwargs):
    """Drop configs whose tile is far larger than every matrix (KEY_M/KEY_N: max m/n, next pow2)."""
    km, kn = named_args["KEY_M"], named_args["KEY_N"]
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= max(km, 32) and c.kwargs["BLOCK_N"] <= max(kn, 32)]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]


_AUTOTUNE_KEY = ["KEY_M", "KEY_N", "KEY_K", "KEY_W", "U_DT", "S_DT", "VH_DT", "OUT_DT", "MAP",
                 "U_LAYOUT", "VH_LAYOUT", "OUT_LAYOUT", "S_CONTIG", "ALIGNED", "PRECISION"]


@triton.autotune(configs=_gemm_configs(), key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune_configs})
@triton.heuristics({
    "EVEN_M": lambda a: a["M_DIV"] % a["BLOCK_M"] == 0,
    "EVEN_N": lambda a: a["N_DIV"] % a["BLOCK_N"] == 0,
    "EVEN_K": lambda a: a["K_DIV"] % a["BLOCK_K"] == 0,
    "M_VEC": lambda a: _pow2_factor(a["M_DIV"], 16),
    "N_VEC": lambda a: _pow2_factor(a["N_DIV"], 16),
    "K_VEC": lambda a: _pow2_factor(a["K_DIV"], 16),
})
@triton.jit
def _grouped_reconstruct_kernel(
    tab_ptr, G, M_DIV, N_DIV, K_DIV,  # M_DIV/N_DIV/K_DIV: gcd of all m / n / k (EVEN_* heuristics)
    KEY_M, KEY_N, KEY_K, KEY_W,  # autotune key only: max m, n, k (next pow2), work bucket
    U_DT: tl.constexpr, S_DT: tl.constexpr, VH_DT: tl.constexpr, OUT_DT: tl.constexpr,
    COMPUTE_DT: tl.constexpr, MAP: tl.constexpr,
    U_LAYOUT: tl.constexpr, VH_LAYOUT: tl.constexpr, OUT_LAYOUT: tl.constexpr,
    S_CONTIG: tl.constexpr, ALIGNED: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PROGRAMS_PER_SM: tl.constexpr,  # used by the launcher's grid only
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
    M_VEC: tl.constexpr, N_VEC: tl.constexpr, K_VEC: tl.constexpr,
):
    tile = tl.program_id(0)
    step = tl.num_programs(0)
    tiles_before = 0
    for g in range(G):
        row = tab_ptr + g * 16
        # M_VEC/N_VEC/K_VEC: a power of two dividing every m/n/k (true by construction). It tells
        # the compiler that masks (rn < n) and wrapped offsets (rn % n) are constant/contiguous in
        # groups of that many elements, so masked edge tiles still use vector accesses.
        m = tl.multiple_of(tl.load(row + 4).to(tl.int32), M_VEC)
        n = tl.multiple_of(tl.load(row + 5).to(tl.int32), N_VEC)
        tiles_m = tl.cdiv(m, BLOCK_M)
        tiles_n = tl.cdiv(n, BLOCK_N)
        ntiles = tiles_m * tiles_n
        while tile >= tiles_before and tile < tiles_before + ntiles:
            # ---- which tile of matrix g (grouped order: GROUP_M row blocks share Vh in L2)
            local = tile - tiles_before
            per_group = GROUP_M * tiles_n
            first_m = (local // per_group) * GROUP_M
            group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
            tm = first_m + (local % per_group) % group_rows
            tn = (local % per_group) // group_rows

            # ---- operands of matrix g
            k = tl.multiple_of(tl.load(row + 6).to(tl.int32), K_VEC)
            u_base = tl.load(row + 0).to(tl.pointer_type(U_DT))
            s_base = tl.load(row + 1).to(tl.pointer_type(S_DT))
            vh_base = tl.load(row + 2).to(tl.pointer_type(VH_DT))
            out_base = tl.load(row + 3).to(tl.pointer_type(OUT_DT))
            if S_CONTIG:
                s_s = 1
            else:
                s_s = tl.load(row + 9)
            if U_LAYOUT == 1:
                u_sm = tl.load(row + 7)
                u_sk = 1
            elif U_LAYOUT == 2:
                u_sm = 1
                u_sk = tl.load(row + 8)
            else:
                u_sm = tl.load(row + 7)
                u_sk = tl.load(row + 8)
            if VH_LAYOUT == 1:
                vh_sk = tl.load(row + 10)
                vh_sn = 1
            elif VH_LAYOUT == 2:
                vh_sk = 1
                vh_sn = tl.load(row + 11)
            else:
                vh_sk = tl.load(row + 10)
                vh_sn = tl.load(row + 11)
            if OUT_LAYOUT == 1:
                out_sm = tl.load(row + 12)
                out_sn = 1
            elif OUT_LAYOUT == 2:
                out_sm = 1
                out_sn = tl.load(row + 13)
            else:
                out_sm = tl.load(row + 12)
                out_sn = tl.load(row + 13)
            if ALIGNED:
                # The launcher checked: every base 16-byte aligned, every non-unit stride a multiple
                # of 16 bytes. Lets the compiler use 16-byte vector loads/stores.
                u_base = tl.multiple_of(u_base, 16)
                vh_base = tl.multiple_of(vh_base, 16)
                out_base = tl.multiple_of(out_base, 16)
                if U_LAYOUT == 1:
                    u_sm = tl.multiple_of(u_sm, 128 // U_DT.primitive_bitwidth)
                if U_LAYOUT == 2:
                    u_sk = tl.multiple_of(u_sk, 128 // U_DT.primitive_bitwidth)
                if VH_LAYOUT == 1:
                    vh_sk = tl.multiple_of(vh_sk, 128 // VH_DT.primitive_bitwidth)
                if VH_LAYOUT == 2:
                    vh_sn = tl.multiple_of(vh_sn, 128 // VH_DT.primitive_bitwidth)
                if OUT_LAYOUT == 1:
                    out_sm = tl.multiple_of(out_sm, 128 // OUT_DT.primitive_bitwidth)
                if OUT_LAYOUT == 2:
                    out_sn = tl.multiple_of(out_sn, 128 // OUT_DT.primitive_bitwidth)

            rm = tm * BLOCK_M + tl.arange(0, BLOCK_M)
            rn = tn * BLOCK_N + tl.arange(0, BLOCK_N)
            rk = tl.arange(0, BLOCK_K)
            if EVEN_M:
                lm = rm
            else:
                lm = rm % m  # rows past m re-read valid rows; their results are never stored
            if EVEN_N:
                ln = rn
            else:
                ln = rn % n
            u_ptrs = u_base + lm[:, None] * u_sm + rk[None, :] * u_sk
            vh_ptrs = vh_base + rk[:, None] * vh_sk + ln[None, :] * vh_sn
            s_ptrs = s_base + rk * s_s

            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=COMPUTE_DT)
            for kk in range(0, tl.cdiv(k, BLOCK_K)):
                if EVEN_K:
                    u = tl.load(u_ptrs)
                    sv = tl.load(s_ptrs)
                    vh = tl.load(vh_ptrs)
                else:
                    k_left = k - kk * BLOCK_K
                    u = tl.load(u_ptrs, mask=rk[None, :] < k_left, other=0.0)
                    sv = tl.load(s_ptrs, mask=rk < k_left, other=0.0)
                    vh = tl.load(vh_ptrs, mask=rk[:, None] < k_left, other=0.0)
                # the sigma-map fused into the U operand: column j of the U tile times f(s_j)
                fs = _map_values(_cvt(sv, COMPUTE_DT), 1.0, 1.0, MAP)
                a = _cvt(u, COMPUTE_DT) * fs[None, :]
                acc = tl.dot(a, _cvt(vh, COMPUTE_DT), acc, input_precision=PRECISION, out_dtype=COMPUTE_DT)
                u_ptrs += BLOCK_K * u_sk
                vh_ptrs += BLOCK_K * vh_sk
                s_ptrs += BLOCK_K * s_s

            out_ptrs = out_base + rm[:, None] * out_sm + rn[None, :] * out_sn
            if EVEN_M and EVEN_N:
                tl.store(out_ptrs, _cvt(acc, OUT_DT))
            else:
                tl.store(out_ptrs, _cvt(acc, OUT_DT), mask=(rm[:, None] < m) & (rn[None, :] < n))
            tile += step
        tiles_before += ntiles


# ----------------------------------------------------------------------------------------------
# bias rule

# Pointer table of the bias kernel: a header row [eps as float64 bits, 0, 0, 0, 0], then per bias
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
        v = _cvt(tl.load(src + idx * s_in, mask=idx < n, other=0.0), tl.float64)
        sq += v * v
    denom = tl.sqrt(tl.sqrt(tl.sum(sq, 0)) + eps)  # float64: correctly rounded
    # Second pass re-reads the input: in-place (dst == src) is safe, each element is read before
    # its own write and no other element depends on it.
    for start in range(0, n, BLOCK):
        idx = start + offs
        v = _cvt(tl.load(src + idx * s_in, mask=idx < n, other=0.0), tl.float64)
        tl.store(dst + idx * s_out, _cvt(v / denom, OUT_DT), mask=idx < n)


# ----------------------------------------------------------------------------------------------
# host side


def _f64_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _check_device(device: torch.device, what: str) -> None:
    if _INTERPRETING:
        if device.type != "cpu":
            raise RuntimeError(
                f"svs._reconstruct (Triton): {what} is on {device}; under TRITON_INTERPRET=1 the "
                "Triton kernels take CPU tensors only (their pointer tables hold host addresses)")
    elif device.type != "cuda":
        raise RuntimeError(f"svs._reconstruct (Triton): {what} is on {device}; expected a CUDA tensor "
                           "(set TRITON_INTERPRET=1 before importing triton to run on CPU)")


def _table(rows: List[int], device: torch.device) -> torch.Tensor:
    t = torch.tensor(rows, dtype=torch.int64)
    if device.type == "cpu":
        return t
    # Pinned + non_blocking: no host sync with the work already queued on the stream (a pageable
    # copy would wait for it); the caching host allocator keeps the pinned block until the copy ran.
    return t.pin_memory().to(device, non_blocking=True)


def _num_programs(device: torch.device) -> int:
    if device.type == "cpu":
        return 3  # interpreter: a few programs, each striding over several tiles and matrices
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _device_ctx(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.device(device)
    import contextlib

    return contextlib.nullcontext()


def _map_rows(s_list: Sequence[torch.Tensor], power: float) -> (List[int], int):
    rows = [_f64_bits(power), 0, 0, 0]
    total = 0
    for s in s_list:
        n = s.numel()
        rows += [s.data_ptr(), n, s.stride(0) if n else 1, total]
        total += n
    return rows, total


def _launch_map(tab: torch.Tensor, out: torch.Tensor, s_dtype: torch.dtype, code: int, count: int) -> None:
    if count == 0:
        return
    _sigma_map_kernel[(count,)](tab, out, S_DT=_TL_DTYPE[s_dtype], MAP=code, BLOCK=64 if _INTERPRETING else 256,
                                enable_fp_fusion=True)


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
    if s.dtype not in _TL_DTYPE:
        raise RuntimeError(f"svs.sigma_map: s has dtype {s.dtype}; expected a float dtype")
    _check_device(s.device, "s")
    offs = [int(o) for o in torch.as_tensor(offsets).tolist()]
    if len(offs) < 1 or offs[0] != 0 or offs[-1] != s.numel() or any(b < a for a, b in zip(offs, offs[1:])):
        raise RuntimeError(f"svs.sigma_map: offsets must run from 0 to {s.numel()} without decreasing, got {offs}")
    if out is None:
        out = torch.empty_like(s, memory_format=torch.contiguous_format)
    elif out.shape != s.shape or not out.is_contiguous() or out.dtype not in _TL_DTYPE or out.device != s.device:
        raise RuntimeError("svs.sigma_map: out must be a contiguous float tensor shaped like s on s's device")
    if s.numel() == 0:
        return out
    views = [s[a:b] for a, b in zip(offs, offs[1:])]
    rows, _ = _map_rows(views, power)
    # The kernel writes matrix i at out offset rows[...,3] == offs[i], i.e. the same packing as s.
    with _device_ctx(s.device):
        tab = _table(rows, s.device)
        _launch_map(tab, out, s.dtype, code, len(views))
    return out


def reconstruct(u: Sequence[torch.Tensor], s: Sequence[torch.Tensor], vh: Sequence[torch.Tensor],
                out: Sequence[torch.Tensor], map: str = "sqrt", *, input_precision: Optional[str] = None) -> None:
    """out[i] = U_i diag(f(s_i)) Vh_i for every i (the contract of svs::_reconstruct).

    U_i (m_i, k_i), s_i (k_i,), Vh_i (k_i, n_i), out[i] an (m_i, n_i) view (any strides) of the
    final output, in any float dtype. f uses max(s_i) for spectral; s <= 0 maps to 0. One GEMM
    launch per combination of (U, s, Vh, out) dtypes -- one in practice -- plus, for log1p, abslog,
    power and spectral, one sigma-map launch writing f(s) of all matrices into a packed buffer that
    the GEMM then reads (those maps need float64 transcendentals or a per-matrix max, too costly to
    redo in every tile). out must not overlap u, s or vh.
    """
    code, power = parse_map(map)
    if not (len(u) == len(s) == len(vh) == len(out)):
        raise RuntimeError("svs._reconstruct: u, s, vh and out must have the same length")
    precision = input_precision or DEFAULT_INPUT_PRECISION
    if precision not in ("ieee", "tf32x3", "tf32"):
        raise RuntimeError(f"svs._reconstruct: input_precision must be 'ieee', 'tf32x3' or 'tf32', got {precision!r}")
    if len(u) == 0:
        return
    device = out[0].device
    _check_device(device, "out[0]")
    # One pass over the matrices, reading each tensor's metadata once (host overhead matters for
    # models with many small matrices): per dtype combination, one record per matrix.
    groups: Dict[tuple, List[tuple]] = {}
    for i, (ui, si, vi, oi) in enumerate(zip(u, s, vh, out)):
        dts = (ui.dtype, si.dtype, vi.dtype, oi.dtype)
        for t, dt, what in zip((ui, si, vi, oi), dts, ("u", "s", "vh", "out")):
            if dt not in _TL_DTYPE:
                raise RuntimeError(f"svs._reconstruct: {what}[{i}] has dtype {dt}; expected a float dtype")
            if t.device != device:
                raise RuntimeError(f"svs._reconstruct: {what}[{i}] is on {t.device} but out[0] is on {device}")
        ush, ssh, vsh, osh = ui.shape, si.shape, vi.shape, oi.shape
        if len(ush) != 2 or len(ssh) != 1 or len(vsh) != 2 or len(osh) != 2:
            raise RuntimeError(
                f"svs._reconstruct: matrix {i}: expected u 2-D, s 1-D, vh 2-D, out 2-D, got shapes "
                f"{tuple(ush)}, {tuple(ssh)}, {tuple(vsh)}, {tuple(osh)}")
        m, k = ush
        n = vsh[1]
        if ssh[0] != k or vsh[0] != k or osh[0] != m or osh[1] != n:
            raise RuntimeError(
                f"svs._reconstruct: matrix {i}: shapes u {tuple(ush)}, s {tuple(ssh)}, vh "
                f"{tuple(vsh)}, out {tuple(osh)} do not fit u (m, k), s (k,), vh (k, n), out (m, n)")
        if m >= 2**31 or n >= 2**31 or k >= 2**31:
            raise RuntimeError(f"svs._reconstruct: matrix {i} has a dimension >= 2^31")
        if m == 0 or n == 0:
            continue  # nothing to write
        groups.setdefault(dts, []).append(
            (m, n, k, ui.data_ptr(), ui.stride(), si.data_ptr(), si.stride()[0] if k else 1,
             vi.data_ptr(), vi.stride(), oi.data_ptr(), oi.stride()))

    for dts, mats in groups.items():
        compute = torch.float64 if torch.float64 in (dts[0], dts[2]) else torch.float32
        prec = "ieee" if compute == torch.float64 else precision
        with _device_ctx(device):
            _launch_group(mats, dts, code, power, compute, prec, device)


def _layout_of(mats, ptr_i: int, stride_i: int, rows_i: int, cols_i: int, es: int, aligned: bool):
    """(layout, aligned) of one operand over all matrices: 1 if every view has unit column stride,
    2 if unit row stride, else 0 (a size-1 dimension matches either); aligned: every base 16-byte
    aligned and every non-unit stride a multiple of 16 bytes."""
    row = all(mt[cols_i] == 1 or mt[stride_i][1] == 1 for mt in mats)
    col = not row and all(mt[rows_i] == 1 or mt[stride_i][0] == 1 for mt in mats)
    layout = 1 if row else 2 if col else 0
    if layout and aligned:
        lead = 0 if layout == 1 else 1
        aligned = all(mt[ptr_i] % 16 == 0 and (mt[stride_i][lead] * es) % 16 == 0 for mt in mats)
    return layout, aligned and layout != 0


def _launch_group(mats, dts, code, power, compute, precision, device) -> None:
    u_dt, s_dt, vh_dt, out_dt = dts
    G = len(mats)
    fused = code in (SQRT, ONES, SQUARE, IDENTITY)
    rows: List[int] = []
    fs = None
    if not fused:
        # f(s) of all matrices in one map launch, packed; the GEMM reads it with the identity map.
        rows += [_f64_bits(power), 0, 0, 0]
        total = 0
        for mt in mats:
            rows += [mt[5], mt[2], mt[6], total]
            total += mt[2]
        fs = torch.empty(max(total, 1), dtype=compute, device=device)
    gemm_at = len(rows)
    fs_ptr, fs_es = (fs.data_ptr(), fs.element_size()) if fs is not None else (0, 0)
    offset = 0
    for m, n, k, up, us, sp, ss, vp, vs, op, os_ in mats:
        if not fused:
            sp, ss = fs_ptr + offset * fs_es, 1
            offset += k
        rows += [up, sp, vp, op, m, n, k, us[0], us[1], ss, vs[0], vs[1], os_[0], os_[1], 0, 0]
    tab = _table(rows, device)
    if not fused:
        _launch_map(tab, fs, s_dt, code, G)

    can_align = not _INTERPRETING
    u_layout, u_al = _layout_of(mats, 3, 4, 0, 2, u_dt.itemsize, can_align)
    vh_layout, vh_al = _layout_of(mats, 7, 8, 2, 1, vh_dt.itemsize, can_align)
    out_layout, out_al = _layout_of(mats, 9, 10, 0, 1, out_dt.itemsize, can_align)
    ms = [mt[0] for mt in mats]
    ns = [mt[1] for mt in mats]
    ks = [mt[2] for mt in mats]
    flops = sum(2 * a * b * c for a, b, c in zip(ms, ns, ks))
    sms = _num_programs(device)

    def grid(meta):  # persistent: min(#tiles, CTAs that fit on the GPU at once)
        bm, bn = meta["BLOCK_M"], meta["BLOCK_N"]
        tiles = sum(((a + bm - 1) // bm) * ((b + bn - 1) // bn) for a, b in zip(ms, ns))
        return (max(1, min(sms * meta["PROGRAMS_PER_SM"], tiles)),)

    _grouped_reconstruct_kernel[grid](
        tab[gemm_at:], G, functools.reduce(math.gcd, ms), functools.reduce(math.gcd, ns),
        functools.reduce(math.gcd, ks) if any(ks) else 1 << 30,
        _next_pow2(max(ms)), _next_pow2(max(ns)), _next_pow2(max(ks)), _next_pow2(max(1, flops >> 20)),
        U_DT=_TL_DTYPE[u_dt], S_DT=_TL_DTYPE[compute if not fused else s_dt], VH_DT=_TL_DTYPE[vh_dt],
        OUT_DT=_TL_DTYPE[out_dt], COMPUTE_DT=_TL_DTYPE[compute], MAP=code if fused else IDENTITY,
        U_LAYOUT=u_layout, VH_LAYOUT=vh_layout, OUT_LAYOUT=out_layout, ALIGNED=u_al and vh_al and out_al,
        S_CONTIG=(not fused) or all(mt[2] <= 1 or mt[6] == 1 for mt in mats), PRECISION=precision,
        enable_fp_fusion=True,
    )


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
        if b.dtype not in _TL_DTYPE or o.dtype not in _TL_DTYPE:
            raise RuntimeError(f"svs.scale_biases: biases[{i}]/out[{i}] must have a float dtype")
        if b.numel() == 0:
            continue
        _check_device(b.device, f"biases[{i}]")
        _check_device(o.device, f"out[{i}]")
        groups.setdefault((b.dtype, o.dtype, b.device), []).append(i)
    for (in_dt, out_dt, device), idx in groups.items():
        rows = [_f64_bits(eps), 0, 0, 0, 0]
        for i in idx:
            b, o = biases[i], out[i]
            rows += [b.data_ptr(), o.data_ptr(), b.numel(), b.stride(0), o.stride(0)]
        with _device_ctx(device):
            tab = _table(rows, device)
            _bias_kernel[(len(idx),)](tab, IN_DT=_TL_DTYPE[in_dt], OUT_DT=_TL_DTYPE[out_dt],
                                      BLOCK=128 if _INTERPRETING else 1024, enable_fp_fusion=True)
    return list(out)


def autotune_results() -> Dict[str, List[dict]]:
    """The autotuner's chosen config per key, for every autotuned kernel (for benchmark reports)."""
    tuner = _grouped_reconstruct_kernel
    entries = []
    cache = dict(getattr(tuner, "cache", {}) or {})
    cfg_dict = lambda c: dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, num_ctas=c.num_ctas)
    for key, cfg in cache.items():
        # key: the _AUTOTUNE_KEY values in order, then the dtypes of the tensor arguments
        entries.append({"key": dict(zip(_AUTOTUNE_KEY, (str(x) for x in key))), "config": cfg_dict(cfg)})
    if not entries and len(tuner.configs) == 1:  # a single config is never tuned (the interpreter's)
        entries.append({"key": "any (single config)", "config": cfg_dict(tuner.configs[0])})
    return {"_grouped_reconstruct_kernel": entries}


# ----------------------------------------------------------------------------------------------
# registration as the CUDA kernel of svs::_reconstruct

_LIBS: List[torch.library.Library] = []


def _reconstruct_op_impl(u, s, vh, out, map="sqrt"):
    reconstruct(u, s, vh, out, map)


def register(dispatch_key: str = "CUDA") -> torch.library.Library:
    """Register :func:`reconstruct` as the ``dispatch_key`` kernel of ``svs::_reconstruct``.

    Returns the Library holding the registration (kept alive here; ``lib._destroy()`` undoes it,
    which tests use with dispatch_key="CPU" under the interpreter).
    """
    lib = torch.library.Library("svs", "IMPL")
    lib.impl("_reconstruct", _reconstruct_op_impl, dispatch_key)
    _LIBS.append(lib)
    return lib
