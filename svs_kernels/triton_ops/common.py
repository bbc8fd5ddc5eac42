"""What every Triton kernel of svs-kernels shares: the interpreter switch, dtype table, jit helpers
(conversions, sigma-maps, TF32 rounding) and the host-side pointer-table helpers.

The kernels address their operands through int64 pointer tables (data_ptr, sizes, strides per
matrix), cast back to typed pointers in the kernel (``int.to(tl.pointer_type(T))``). That works
compiled for the GPU and under the interpreter (``TRITON_INTERPRET=1``) on CPU tensors, whose
tables hold host addresses (so the launchers refuse CUDA tensors under the interpreter).
"""
import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from ._maps import CODES


def interpreting() -> bool:
    """Whether Triton runs under its CPU interpreter (TRITON_INTERPRET=1)."""
    try:
        return bool(triton.knobs.runtime.interpret)
    except AttributeError:  # older triton
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Read once: triton decides interpreter or compiler when it is imported.
INTERPRETING = interpreting()

# The map codes the kernels compare MAP with, from the extension (csrc/refine.h's enum), as constexprs.
SQRT, LOG1P, ABSLOG, POWER, ONES, SPECTRAL, SQUARE = (tl.constexpr(CODES[name]) for name in (
    "sqrt", "log1p", "abslog", "power", "ones", "spectral", "square"))

TL_DTYPE = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
            torch.float64: tl.float64}


@triton.jit
def cvt(x, DT: tl.constexpr):
    """x.to(DT), but float64 <-> 16-bit float through float32, as torch converts (and the
    interpreter's direct float64 <-> bfloat16 is wrong)."""
    if x.dtype == tl.float64 and DT.primitive_bitwidth == 16:
        r = x.to(tl.float32).to(DT)
    elif x.dtype.primitive_bitwidth == 16 and DT == tl.float64:
        r = x.to(tl.float32).to(DT)
    else:
        r = x.to(DT)
    return r


@triton.jit
def round_tf32(x):
    """float32 x rounded to the nearest TF32 value (10 explicit mantissa bits, ties away from zero,
    as cvt.rna.tf32.f32): a TF32 tensor core then multiplies it exactly, whether it rounds or
    truncates its inputs. Relative error <= 2^-11."""
    bits = x.to(tl.uint32, bitcast=True)
    return ((bits + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def map_values(s, s_max, power, MAP: tl.constexpr):
    """f(s) elementwise in s's dtype (MAP: a code of _maps.CODES); 0 wherever s <= 0, no NaN/Inf there."""
    pos = s > 0
    safe = tl.where(pos, s, 1.0)  # keeps log/div finite where the result is discarded anyway
    if MAP == SQRT:  # sqrt (float64 sqrt is correctly rounded)
        f = tl.sqrt(safe)
    elif MAP == LOG1P:  # log1p, Goldberg's accurate form: log(u) * s / (u - 1) with u = 1 + s
        u = 1.0 + safe
        one = u == 1.0
        f = tl.where(one, safe, tl.log(u) * (safe / tl.where(one, 1.0, u - 1.0)))
    elif MAP == ABSLOG:  # abslog
        f = tl.abs(tl.log(safe))
    elif MAP == POWER:  # power
        f = tl.exp(power * tl.log(safe))
    elif MAP == ONES:  # ones
        f = tl.full(s.shape, 1.0, s.dtype)
    elif MAP == SPECTRAL:  # spectral
        f = safe / tl.where(s_max > 0, s_max, 1.0)
    elif MAP == SQUARE:  # square
        f = safe * safe
    else:  # identity
        f = safe
    return tl.where(pos, f, 0.0).to(s.dtype)


# ----------------------------------------------------------------------------------------------
# host side


def check_device(device: torch.device, what: str) -> None:
    if INTERPRETING:
        if device.type != "cpu":
            raise RuntimeError(
                f"svs._reconstruct (Triton): {what} is on {device}; under TRITON_INTERPRET=1 the "
                "Triton kernels take CPU tensors only (their pointer tables hold host addresses)")
    elif device.type != "cuda":
        raise RuntimeError(f"svs._reconstruct (Triton): {what} is on {device}; expected a CUDA tensor "
                           "(set TRITON_INTERPRET=1 before importing triton to run on CPU)")


def to_device(table: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU int64 table on device: pinned + non_blocking, so no host sync with queued work (the
    caching host allocator keeps the pinned block until the copy ran)."""
    if device.type == "cpu":
        return table
    return table.pin_memory().to(device, non_blocking=True)


def num_programs(device: torch.device) -> int:
    """Programs of a persistent grid: the SM count (the interpreter: 3, so each program strides
    over several tiles and matrices)."""
    if device.type == "cpu":
        return 3
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def device_ctx(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
