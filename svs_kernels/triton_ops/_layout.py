"""The layout of the Triton reconstruction's launch tables as the kernels and launchers read it.

csrc/launch_table.cpp owns it (``svs::_launch_layout``) and builds the tables with it
(``svs::_reconstruct_plan``); this module only reads it, so the two sides cannot disagree. No triton
import, so it works (and is tested) without Triton.
"""
from typing import Tuple

import torch

_DTYPES, _KINDS, _LAYOUTS, _WIDTHS = torch.ops.svs._launch_layout()

# The dtypes by their index in the tables and launch records.
DTYPES: Tuple[torch.dtype, ...] = tuple(getattr(torch, name) for name in _DTYPES)

# The launch kinds (field 0 of a launch record).
CHUNK, STAGE, GEMM = (_KINDS.index(kind) for kind in ("chunk", "stage", "gemm"))

# The stage layouts (stage.py's LAYOUT): a unit stride along dim 1, along dim 0, or neither.
ROW_MAJOR, COL_MAJOR, GENERAL = (_LAYOUTS.index(name) for name in ("row_major", "col_major", "general"))

# Widths in int64 fields: a launch record, a sigma-map row (and its header), a staging job, a GEMM row.
RECORD, MAP_ROW, STAGE_ROW, GEMM_ROW = _WIDTHS
