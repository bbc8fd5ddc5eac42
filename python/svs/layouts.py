"""Which matrix SVS decomposes for each kind of layer, decided by the module that owns the weight.

SVS decomposes a layer's weight as the matrix ``(out, in...)`` and pairs it with the bias of size
``out``. Most layers store their weight that way, and need nothing here:

- ``nn.Linear``: ``(out, in)``.
- ``nn.Conv1d/2d/3d``: ``(out, in/groups, k...)``, flattened to ``(out, in/groups * prod(k))``. A
  grouped conv is decomposed as that one matrix, as the authors' code does (not group by group).

The others are viewed as that matrix first (:class:`Layout`), and the result is written back in
their own storage, so the result does not depend on how a library stores the layer:

- ``nn.ConvTranspose1d/2d/3d`` stores ``(in, out/groups, k...)``: decomposed as the weight of the
  equivalent conv, ``(out, in/groups, k...)`` (group by group, in and out swapped; the kernel's
  spatial flip is a column permutation, which SVS commutes with, so it is left out).
- transformers' ``Conv1D`` (GPT-2 family) stores ``(in, out)``: decomposed as its transpose, the
  weight of the equivalent ``nn.Linear``.
- transformers' fused MoE experts (``gate_up_proj`` ``(E, 2I, H)``, ``down_proj`` ``(E, H, I)``, as
  transformers >= 5 keeps Mixtral, Qwen-MoE, ...; also the transposed and interleaved variants it
  declares with ``is_transposed`` / ``is_concatenated``): each expert's own gate, up and down
  matrices (and biases), split the way ``save_pretrained`` splits them on disk (Mixtral's
  ``experts.N.w1/w3/w2``). Their parts get per-expert names, ``<experts>.N.gate_proj.weight``,
  ``<experts>.N.up_proj.weight``, ``<experts>.N.down_proj.weight``, which presets and
  ``include``/``exclude`` see.

A checkpoint directory has no modules: :func:`of_directory` builds the model its ``config.json``
names on the meta device (transformers or diffusers, when installed; no weights, no download)
and takes the layouts from its modules, so a directory is refined as the same model in memory.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Tuple

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class Layout:
    """Stored tensors (``stored``, by name) and the matrices SVS decomposes in them
    (:meth:`parts`); :meth:`write` puts refined matrices back into the stored layout."""

    stored: Tuple[str, ...]

    def parts(self, tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Each matrix by name, ``(out, in...)``, as a view of the stored ``tensors``."""
        raise NotImplementedError

    def write(self, tensors: Dict[str, torch.Tensor], new: Dict[str, torch.Tensor]) -> None:
        """Writes the matrices ``new`` (by name, any subset) into the stored ``tensors``, in place."""
        parts = self.parts(tensors)
        for name, value in new.items():
            parts[name].copy_(value)


@dataclasses.dataclass(frozen=True)
class Transposed(Layout):
    """transformers' ``Conv1D``: weight ``(in, out)``, decomposed as its transpose."""

    def parts(self, tensors):
        return {self.stored[0]: tensors[self.stored[0]].T}


@dataclasses.dataclass(frozen=True)
class ConvTransposed(Layout):
    """``nn.ConvTranspose*``: weight ``(in, out/g, k...)``, decomposed as ``(out, in/g, k...)``
    (for ``groups`` > 1 a copy, not a view: the groups' blocks are reordered)."""

    groups: int = 1

    def _grouped(self, t: torch.Tensor) -> torch.Tensor:  # (g, out/g, in/g, k...), a view of t
        return t.unflatten(0, (self.groups, -1)).transpose(1, 2)

    def parts(self, tensors):
        t = self._grouped(tensors[self.stored[0]])
        return {self.stored[0]: t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])}

    def write(self, tensors, new):
        for name, value in new.items():
            self._grouped(tensors[name]).copy_(value.unflatten(0, (self.groups, -1)))


@dataclasses.dataclass(frozen=True)
class Experts(Layout):
    """transformers' fused experts module at ``prefix`` (its ``has_gate``, ``has_bias``,
    ``is_transposed``, ``is_concatenated`` flags): one matrix (and bias) per expert and projection."""

    prefix: str = ""
    num_experts: int = 0
    has_gate: bool = True
    has_bias: bool = False
    transposed: bool = False
    concatenated: bool = True

    @classmethod
    def of(cls, prefix: str, m: nn.Module) -> "Experts":
        first = "gate_up_proj" if m.has_gate else "up_proj"
        names = [first, "down_proj"] + ([f"{first}_bias", "down_proj_bias"] if m.has_bias else [])
        return cls(tuple(prefix + n for n in names), prefix, getattr(m, first).shape[0], bool(m.has_gate),
                   bool(m.has_bias), bool(m.is_transposed), bool(m.is_concatenated))

    def parts(self, tensors):
        fused, down = tensors[self.stored[0]], tensors[self.stored[1]]
        fused_b, down_b = (tensors[self.stored[2]], tensors[self.stored[3]]) if self.has_bias else (None, None)
        out: Dict[str, torch.Tensor] = {}
        for e in range(self.num_experts):
            w = self._matrix(fused[e])
            rows = self._rows(w.shape[0]) if self.has_gate else {"up_proj": slice(None)}
            layers = [(proj, w[r], None if fused_b is None else fused_b[e][r]) for proj, r in rows.items()]
            layers.append(("down_proj", self._matrix(down[e]), None if down_b is None else down_b[e]))
            for proj, weight, bias in layers:
                out[f"{self.prefix}{e}.{proj}.weight"] = weight
                if bias is not None:
                    out[f"{self.prefix}{e}.{proj}.bias"] = bias
        return out

    def _matrix(self, t: torch.Tensor) -> torch.Tensor:
        return t.T if self.transposed else t

    def _rows(self, n: int) -> Dict[str, slice]:
        """The gate and up rows of a fused matrix: ``[gate; up]``, or interleaved ``gate0, up0, ...``."""
        if self.concatenated:
            return {"gate_proj": slice(0, n // 2), "up_proj": slice(n // 2, n)}
        return {"gate_proj": slice(0, n, 2), "up_proj": slice(1, n, 2)}


def of_module(model: nn.Module) -> List[Layout]:
    """The layouts of ``model``'s layers that do not store their weight as ``(out, in...)``,
    found by module type (parameter names as ``model.named_parameters()`` gives them)."""
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    names = {id(p): n for n, p in model.named_parameters()}
    found: List[Layout] = []
    for prefix, m in model.named_modules():
        prefix = f"{prefix}." if prefix else ""
        weight = getattr(m, "weight", None)
        if isinstance(m, nn.modules.conv._ConvTransposeNd) and id(weight) in names:
            found.append(ConvTransposed((names[id(weight)],), m.groups))
        elif conv1d is not None and isinstance(m, conv1d) and id(weight) in names:
            found.append(Transposed((names[id(weight)],)))
        elif all(hasattr(m, a) for a in ("has_gate", "has_bias", "is_transposed", "is_concatenated")):
            layout = Experts.of(prefix, m)
            if all(n in names.values() for n in layout.stored):
                found.append(layout)
    return found


def expand(named: Dict[str, torch.Tensor], layouts: Iterable[Layout]
           ) -> Tuple[Dict[str, torch.Tensor], Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]]:
    """``named`` with each layout's stored tensors replaced by its matrices (in their place, so
    the order is kept), and the function that turns new values of matrices (any subset) into new
    values of the stored tensors (matrices not given keep their stored values)."""
    by_name = {n: layout for layout in layouts if all(s in named for s in layout.stored) for n in layout.stored}
    views: Dict[str, torch.Tensor] = {}
    owner: Dict[str, Layout] = {}
    for name, tensor in named.items():
        layout = by_name.get(name)
        if layout is None:
            views[name] = tensor
        elif name == layout.stored[0]:
            for part, value in layout.parts({s: named[s] for s in layout.stored}).items():
                views[part] = value
                owner[part] = layout

    def fold(new: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        out = {n: v for n, v in new.items() if n not in owner}
        changed: Dict[Layout, Dict[str, torch.Tensor]] = {}
        for name, value in new.items():
            if name in owner:
                changed.setdefault(owner[name], {})[name] = value
        for layout, values in changed.items():
            stored = {s: named[s].detach().clone() for s in layout.stored}
            layout.write(stored, values)
            out.update(stored)
        return out

    return views, fold


def of_directory(root: Path, names: Iterable[str]) -> List[Layout]:
    """The layouts of the checkpoint directory ``root`` (tensor ``names``): the modules of the
    model its ``config.json`` names (``architectures`` for transformers, ``_class_name`` for
    diffusers), built on the meta device. Empty when the library is not installed or does not
    know the class (then every weight is taken as ``(out, in...)``). Only layouts whose stored
    tensors the directory holds under the same names count (transformers' per-expert files of
    fused experts are plain ``(out, in)`` matrices already)."""
    model = _meta_model(Path(root))
    if model is None:
        return []
    names = set(names)
    return [layout for layout in of_module(model)
            if not isinstance(layout, Experts) and set(layout.stored) <= names]


def _meta_model(root: Path):
    try:
        config = json.loads((root / "config.json").read_text())
    except (OSError, ValueError):
        return None
    try:
        return _build_on_meta(root, config)
    except Exception as err:  # noqa: BLE001  (an unknown or broken config: said, then refined without layouts)
        print(f"svs: could not build the model of {root / 'config.json'} on the meta device ({err}); "
              "every weight is taken as (out, in...)", file=sys.stderr)
        return None


def _build_on_meta(root: Path, config: dict):
    try:
        if "_class_name" in config:
            import diffusers

            cls = getattr(diffusers, config["_class_name"], None)
            if cls is None:
                return None
            with torch.device("meta"):
                return cls.from_config(config)
        if config.get("architectures"):
            import transformers

            cls = getattr(transformers, config["architectures"][0], None)
            if cls is None:
                return None
            verbosity = transformers.logging.get_verbosity()
            transformers.logging.set_verbosity_error()  # its notes on the config are not ours to print
            try:
                conf = transformers.AutoConfig.from_pretrained(str(root))
                with torch.device("meta"):
                    return cls(conf)
            finally:
                transformers.logging.set_verbosity(verbosity)
    except ImportError:
        return None
    return None
