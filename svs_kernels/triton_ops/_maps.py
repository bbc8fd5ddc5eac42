"""The sigma-maps of svs.refine as the Triton kernels take them: an integer code and a power.

The extension owns the names, their codes and the parser (``svs::_map_names``, ``svs::_parse_map``);
this module only reads them. No triton import, so it works (and is tested) without Triton.
"""
from typing import Dict, Tuple

import torch

# The names by code (the index of a name here is its code; "power:<p>" stands for every power map).
NAMES: Tuple[str, ...] = tuple(torch.ops.svs._map_names())

# The code of each name without ":<p>" (CODES["power"]); the Triton kernels take it as a tl.constexpr.
CODES: Dict[str, int] = {name.split(":")[0]: code for code, name in enumerate(NAMES)}
IDENTITY = CODES["identity"]  # the largest code


def parse_map(name: str) -> Tuple[int, float]:
    """(map code, power) for a map name; raises ValueError with the C++ operator's message."""
    try:
        code, power = torch.ops.svs._parse_map(name if isinstance(name, str) else repr(name))
    except ValueError as e:
        raise ValueError(str(e).splitlines()[0]) from None
    return int(code), float(power)
