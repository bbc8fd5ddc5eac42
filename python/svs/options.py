"""The options of a refinement, shared by :func:`svs.refine_model`, :func:`svs.refine_state_dict`,
the checkpoint directories (:mod:`svs.sharded`) and ``svs refine``, with their defaults in one place.

The operator's own options (``map``, ``eps``, ``method``, ``certify``) take their defaults from the
operator's schema (csrc/refine_common.cpp), so the C++ and the Python agree by construction.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import torch

import svs_kernels  # noqa: F401  (registers torch.ops.svs.*)

from .presets import DEFAULT_PRESET

_SCHEMA = {a.name: a.default_value for a in torch.ops.svs.refine.default._schema.arguments}
DEFAULT_MAP: str = _SCHEMA["map"]
DEFAULT_EPS: float = _SCHEMA["eps"]
DEFAULT_METHOD: str = _SCHEMA["method"]
DEFAULT_CERTIFY: bool = _SCHEMA["certify"]


@dataclasses.dataclass(frozen=True)
class RefineOptions:
    """What to refine and how (see :func:`svs.refine_model` for each option)."""

    preset: str = DEFAULT_PRESET
    include: Optional[str] = None
    exclude: Optional[str] = None
    map: str = DEFAULT_MAP
    method: str = DEFAULT_METHOD
    eps: float = DEFAULT_EPS
    certify: bool = DEFAULT_CERTIFY
    dry_run: bool = False
    stats: bool = True
    progress: bool = False

    def operator(self) -> Dict[str, Any]:
        """The keyword arguments of the operator call (:func:`svs.refine`)."""
        return dict(map=self.map, eps=self.eps, method=self.method, certify=self.certify)

    def recorded(self) -> Dict[str, Any]:
        """What an output directory's record says was done (not how it was shown or measured)."""
        return dict(preset=self.preset, include=self.include, exclude=self.exclude, **self.operator())


DEFAULTS = RefineOptions()
