"""Checkpoint formats: safetensors, state-dict ``.pt``, and whole pickled modules.

Writes are atomic (a temporary file in the same folder, then ``os.replace``), so an interrupted
run never leaves a half-written checkpoint, and the input file is never overwritten.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Union

import torch
from torch import nn

FORMATS = ("safetensors", "state_dict", "module")


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint: ``format`` is one of :data:`FORMATS`; ``obj`` is a dict of tensors
    (safetensors, state_dict) or an ``nn.Module`` (module)."""

    format: str
    obj: Union[Dict[str, torch.Tensor], nn.Module]

    def tensors(self) -> Dict[str, torch.Tensor]:
        if isinstance(self.obj, nn.Module):
            return {n: p.detach() for n, p in self.obj.named_parameters()}
        return {k: v for k, v in self.obj.items() if isinstance(v, torch.Tensor)}


def load(path: Union[str, Path], trust_pickle: bool = True) -> Checkpoint:
    """Loads ``path``. A ``.safetensors`` file as such; anything else with ``torch.load``:
    first with ``weights_only=True`` (a state dict), and only if that fails because the file
    holds a whole pickled module (``torch.save(model)``, as Diff-Pruning saves pruned models),
    again with ``weights_only=False`` -- which runs code from the file, so this is said on stderr
    and refused with ``trust_pickle=False``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return Checkpoint("safetensors", load_file(str(path)))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as safe_error:  # noqa: BLE001  (any failure of the safe loader)
        if not trust_pickle:
            raise ValueError(
                f"{path} is not a plain state dict (weights_only load failed: {safe_error}); "
                "loading it would unpickle arbitrary objects"
            ) from safe_error
        print(
            f"svs: {path} holds pickled objects, not a plain state dict; loading it with "
            "weights_only=False (this runs code from the file: only do it for files you trust)",
            file=sys.stderr,
        )
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, nn.Module):
        return Checkpoint("module", obj)
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return Checkpoint("state_dict", obj)
    raise ValueError(f"{path}: expected a state dict or an nn.Module, got {type(obj).__name__}")


def save(checkpoint: Checkpoint, path: Union[str, Path]) -> None:
    """Writes ``checkpoint`` to ``path`` atomically in its own format, except that a ``.safetensors``
    path always gets a safetensors file of the tensors."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        obj = checkpoint.obj
        state = obj.state_dict() if isinstance(obj, nn.Module) else obj
        dropped = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if dropped:
            print(f"svs: safetensors holds tensors only; not written: {', '.join(dropped)}", file=sys.stderr)
        tensors = {k: v.detach().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
        atomic_write(path, lambda tmp: save_file(tensors, tmp))
    else:
        atomic_write(path, lambda tmp: torch.save(checkpoint.obj, tmp))


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Calls ``write(tmp)`` on a temporary file beside ``path``, then renames it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
