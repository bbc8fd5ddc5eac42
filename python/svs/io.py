"""Checkpoint formats: safetensors, state-dict ``.pt``, and whole pickled modules.

Loading runs no code from a file unless asked: ``.pt`` files are read with
``torch.load(weights_only=True)``, and a whole pickled module (``torch.save(model)``, as
Diff-Pruning saves pruned models) only with ``trust_pickle=True``. Writes are atomic (temporary
files beside the outputs, then renames), so an error or Ctrl-C never leaves a half-written file.
"""
from __future__ import annotations

import dataclasses
import os
import re
import secrets
import stat
import sys
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import torch
from torch import nn

from .interrupt import interruptible

FORMATS = ("safetensors", "state_dict", "module")
PathLike = Union[str, Path]


class CheckpointError(ValueError):
    """A file that cannot be read as a checkpoint (corrupt, truncated, another format), or one
    that holds pickled objects while ``trust_pickle`` is off; the message says which."""


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint: ``format`` is one of :data:`FORMATS`; ``obj`` is a dict of tensors
    (safetensors, state_dict) or an ``nn.Module`` (module)."""

    format: str
    obj: Union[Dict[str, torch.Tensor], nn.Module]
    metadata: Optional[Dict[str, str]] = None  # a safetensors file's header metadata, written back as it was

    def tensors(self) -> Dict[str, torch.Tensor]:
        if isinstance(self.obj, nn.Module):
            return {n: p.detach() for n, p in self.obj.named_parameters()}
        return {k: v for k, v in self.obj.items() if isinstance(v, torch.Tensor)}


def load(path: PathLike, trust_pickle: bool = False) -> Checkpoint:
    """Loads ``path``: a ``.safetensors`` file as such, anything else with ``torch.load``.

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: as ``open()`` would.
        CheckpointError: the file is corrupt, truncated or not a checkpoint; or it holds pickled
            Python objects (a whole module) and ``trust_pickle`` is False. With
            ``trust_pickle=True`` such a file is loaded with ``weights_only=False``, which runs
            code from the file (said on stderr): only for files from a source you trust.
    """
    path = Path(path)
    open(path, "rb").close()  # the OS's own error for a missing path, a folder, no permission
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata()
            return Checkpoint("safetensors", interruptible(lambda: load_file(str(path))), metadata)
        except SafetensorError as err:
            raise CheckpointError(f"{path} is not a valid safetensors file (truncated or corrupt: {err})") from err
    try:
        obj = interruptible(lambda: torch.load(path, map_location="cpu", weights_only=True))
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001  (the weights-only loader runs no code: any failure means "unreadable")
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if not found:
            raise CheckpointError(
                f"{path} is not a readable PyTorch checkpoint (truncated, corrupt, or not written by "
                f"torch.save): {_last_line(err)}"
            ) from err
        if not trust_pickle:
            raise CheckpointError(
                f"{path} holds pickled Python objects ({found.group(1)}), such as a whole module saved with "
                "torch.save(model); loading it runs code from the file. If you trust its source, allow it "
                "with --trust-pickle (trust_pickle=True in Python)"
            ) from err
        print(f"svs: loading {path} with weights_only=False (trust_pickle): this runs code from the file",
              file=sys.stderr)
        try:
            obj = interruptible(lambda: torch.load(path, map_location="cpu", weights_only=False))
        except OSError:
            raise
        except Exception as err2:  # noqa: BLE001
            raise CheckpointError(f"{path} could not be unpickled: {_last_line(err2)}") from err2
    if isinstance(obj, nn.Module):
        return Checkpoint("module", obj)
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return Checkpoint("state_dict", obj)
    raise CheckpointError(f"{path}: expected a state dict or an nn.Module, got {type(obj).__name__}")


def _last_line(err: BaseException) -> str:
    """The last line of torch.load's error that says what went wrong (not its pointer to the docs)."""
    lines = [s.strip() for s in str(err).splitlines() if s.strip() and "documentation" not in s]
    return re.sub(r"\s*\(Could this error message be improved\?.*$", "", lines[-1]) if lines else type(err).__name__


def writer(checkpoint: Checkpoint, path: PathLike) -> Callable[[str], None]:
    """The function that writes ``checkpoint`` to a given file in the format ``path`` asks for: a
    ``.safetensors`` path gets a safetensors file of the tensors, anything else ``torch.save``."""
    if Path(path).suffix != ".safetensors":
        return lambda tmp: torch.save(checkpoint.obj, tmp)
    from safetensors.torch import save_file

    obj = checkpoint.obj
    state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    dropped = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if dropped:
        print(f"svs: safetensors holds tensors only; not written: {', '.join(dropped)}", file=sys.stderr)
    tensors = {k: v.detach().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    metadata = checkpoint.metadata or {"format": "pt"}  # what torch's safetensors writers put there
    return lambda tmp: save_file(tensors, tmp, metadata=metadata)


def save(checkpoint: Checkpoint, path: PathLike) -> None:
    """Writes ``checkpoint`` to ``path`` atomically (see :func:`writer` for the format)."""
    atomic_write(path, writer(checkpoint, path))


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Calls ``write(tmp)`` on a temporary file beside ``path``, then renames it to ``path``."""
    atomic_write_all({path: write})


def atomic_write_all(files: Dict[PathLike, Callable[[str], None]]) -> None:
    """Writes every file through a temporary file beside it, then renames them all, so an error
    or interrupt while writing changes no file and leaves no temporary one. New files get the mode
    a plain ``open()`` gives under the umask; a replaced file keeps its mode. The temporary name
    ends in the target's suffix, so writers that pick a format by suffix (matplotlib) work."""
    temps: Dict[Path, Path] = {}
    try:
        for path, write in files.items():
            path = Path(path)
            temps[path] = tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
            mode = stat.S_IMODE((path if path.exists() else tmp).stat().st_mode)
            interruptible(lambda: write(str(tmp)))
            os.chmod(tmp, mode)  # again: some writers (safetensors) replace the file they are given
        for path, tmp in temps.items():
            os.replace(tmp, path)
    except BaseException as err:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename and Path(err.filename) in temps.values():
            target = next(p for p, t in temps.items() if t == Path(err.filename))
            raise OSError(err.errno, f"cannot write it ({err.strerror})", str(target)) from err
        raise
