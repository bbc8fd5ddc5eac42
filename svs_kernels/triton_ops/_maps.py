"""The sigma-map names of svs.refine, parsed in Python exactly as csrc/refine_common.cpp parse_map does.

Pure Python (no triton import), so the parser can be used and tested without Triton.
"""
import math
import re
from typing import Tuple

# Integer codes of the maps, in the order of svs::SigmaMap::Kind (csrc/refine.h). The Triton kernels
# receive the code as a tl.constexpr.
SQRT, LOG1P, ABSLOG, POWER, ONES, SPECTRAL, SQUARE, IDENTITY = range(8)

_NAMED = {
    "sqrt": SQRT,
    "log1p": LOG1P,
    "abslog": ABSLOG,
    "ones": ONES,
    "spectral": SPECTRAL,
    "square": SQUARE,
    "identity": IDENTITY,
}

# What std::stod consumes: optional leading whitespace, then a decimal or hexadecimal floating-point
# number, or inf/infinity/nan (those parse but fail the finiteness check). C++ then demands that the
# whole string was consumed, so trailing whitespace or junk is an error (Python's float() would
# accept trailing whitespace and "1_0", hence the explicit grammar).
_DECIMAL = re.compile(r"[ \t\n\v\f\r]*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")
_HEX = re.compile(r"[ \t\n\v\f\r]*[+-]?0[xX]([0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)([pP][+-]?\d+)?\Z")

_EXPECTED = "expected one of sqrt, log1p, abslog, power:<p>, ones, spectral, square, identity"


def parse_map(name: str) -> Tuple[int, float]:
    """(map code, power) for a map name; raises RuntimeError with the C++ operator's message."""
    if not isinstance(name, str):
        raise RuntimeError(f"svs.refine: unknown map {name!r}; {_EXPECTED}")
    code = _NAMED.get(name)
    if code is not None:
        return code, 1.0
    prefix = "power:"
    if name.startswith(prefix):
        text = name[len(prefix):]
        p = math.nan
        if _DECIMAL.match(text):
            p = float(text)
        elif _HEX.match(text):
            stripped = text.lstrip(" \t\n\v\f\r")
            sign = -1.0 if stripped.startswith("-") else 1.0
            body = stripped.lstrip("+-")
            if "p" not in body.lower():
                body += "p0"
            p = sign * float.fromhex(body)
        if not math.isfinite(p):
            raise RuntimeError(f"svs.refine: map 'power:<p>' needs a finite number p, got '{name}'")
        return POWER, p
    raise RuntimeError(f"svs.refine: unknown map '{name}'; {_EXPECTED}")
