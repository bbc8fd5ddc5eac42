"""Checkpoint formats: safetensors, state-dict ``.pt``, and whole pickled modules.

Loading runs no code from a file unless asked: ``.pt`` files are read with
``torch.load(weights_only=True)``, and a whole pickled module (``torch.save(model)``, as
Diff-Pruning saves pruned models) only with ``trust_pickle=True``. Writes are atomic (temporary
files beside the outputs, then renames), so an error or Ctrl-C never leaves a half-written file;
:func:`claim` keeps two runs from writing one output, and the final rename can refuse to replace
a file that appeared meanwhile (:func:`rename_noreplace`).
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import json
import os
import re
import secrets
import shutil
import socket
import stat
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Union

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
    if not stat.S_ISDIR(os.stat(path).st_mode) and not path.is_file():  # os.stat: the OS's error for a missing path
        raise CheckpointError(f"{path} is not a regular file (a FIFO, device or socket)")
    open(path, "rb").close()  # the OS's own error for a folder, no permission
    if path.suffix == ".safetensors":
        from .safetensors_check import read_header, read_tensors

        _, entries, raw = read_header(path)  # the whole header against the file, naming the tensor at fault
        metadata = json.loads(raw).get("__metadata__")  # written back as it was
        tensors = interruptible(lambda: read_tensors(path, entries, sorted(entries)))  # safetensors' order
        return Checkpoint("safetensors", tensors, metadata)
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
    ``.safetensors`` path gets a safetensors file of the tensors, anything else ``torch.save``.
    Both write through a file object or report the OS's error, so a full disk or a read-only
    file system is an ``OSError`` naming the file."""
    if Path(path).suffix != ".safetensors":
        def save_pt(tmp: str) -> None:
            with open(tmp, "wb") as f:  # torch.save to a path hides the OS error ("unexpected pos")
                torch.save(checkpoint.obj, f)
        return save_pt
    obj = checkpoint.obj
    state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    dropped = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if dropped:
        print(f"svs: safetensors holds tensors only; not written: {', '.join(dropped)}", file=sys.stderr)
    tensors, tied = untied({k: v.detach() for k, v in state.items() if isinstance(v, torch.Tensor)})
    metadata = {**(checkpoint.metadata or {"format": "pt"}), **tied}  # "format": what torch's writers put there
    return lambda tmp: _save_safetensors(tensors, metadata, tmp)


def untied(tensors: Dict[str, torch.Tensor]) -> "tuple[Dict[str, torch.Tensor], Dict[str, str]]":
    """Tensors that share memory (tied weights), as safetensors' ``save_model`` writes them: one
    name kept, its exact aliases dropped and recorded in the metadata as ``{alias: kept}`` (what
    ``safetensors.torch.load_model`` and transformers read back); views of another part of a
    shared storage are written as copies. Every tensor made contiguous."""
    tensors, metadata = dict(tensors), {}
    shared: Dict[tuple, list] = {}
    for name, t in tensors.items():
        if t.untyped_storage().nbytes() > 0:
            shared.setdefault((t.device, t.untyped_storage().data_ptr()), []).append(name)
    for names in (n for n in shared.values() if len(n) > 1):
        whole = [n for n in sorted(names) if tensors[n].is_contiguous() and tensors[n].storage_offset() == 0
                 and tensors[n].nbytes == tensors[n].untyped_storage().nbytes()]
        kept = whole[0] if whole else names[0]
        k = tensors[kept]
        for alias in (n for n in names if n != kept):
            t = tensors[alias]
            if whole and (t.data_ptr(), t.shape, t.stride(), t.dtype) == (k.data_ptr(), k.shape, k.stride(), k.dtype):
                metadata[alias] = kept
                del tensors[alias]
            else:  # another part of the storage: save_model would load it back as the whole
                tensors[alias] = t.clone()
    return {k: v.contiguous() for k, v in tensors.items()}, metadata


def _save_safetensors(tensors: Dict[str, torch.Tensor], metadata: Dict[str, str], tmp: str) -> None:
    """``save_file``, its I/O errors ("... (os error 28)") raised as the ``OSError`` they are."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, tmp, metadata=metadata or None)
    except SafetensorError as err:
        code = re.search(r"\(os error (\d+)\)", str(err))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), tmp) from err


def save(checkpoint: Checkpoint, path: PathLike, replace: bool = True) -> None:
    """Writes ``checkpoint`` to ``path`` atomically (see :func:`writer` for the format)."""
    atomic_write(path, writer(checkpoint, path), replace)


def atomic_write(path: PathLike, write: Callable[[str], None], replace: bool = True) -> None:
    """Calls ``write(tmp)`` on a temporary file beside ``path``, then renames it to ``path``."""
    atomic_write_all({path: write}, replace)


def temp_path(path: Path, kind: str = "tmp") -> Path:
    """A new name beside ``path`` for a temporary of ``kind`` ("tmp": being written, "old": being
    replaced). It ends in the target's suffix, so writers that pick a format by suffix
    (matplotlib) work, and :func:`claim` recognises a dead run's temporaries by it."""
    return path.with_name(f".{path.name}.svs-{kind}-{secrets.token_hex(4)}{path.suffix}")


def _is_temp_of(path: Path, name: str) -> bool:
    pattern = rf"\.{re.escape(path.name)}\.svs-(tmp|old)-[0-9a-f]{{8}}{re.escape(path.suffix)}"
    return re.fullmatch(pattern, name) is not None


def atomic_write_all(files: Dict[PathLike, Callable[[str], None]], replace: bool = True) -> None:
    """Writes every file through a temporary file beside it, then renames them all, so an error
    or interrupt while writing changes no file and leaves no temporary one. New files get the mode
    a plain ``open()`` gives under the umask; a replaced file keeps its mode. With ``replace``
    False a file that appeared meanwhile (another run's output) is not replaced: a
    ``FileExistsError`` says so, and the files this call had already put in place are removed."""
    temps: Dict[Path, Path] = {}
    placed: "list[Path]" = []
    try:
        for path, write in files.items():
            path = Path(path)
            temps[path] = tmp = temp_path(path)
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
            mode = stat.S_IMODE((path if path.exists() else tmp).stat().st_mode)
            interruptible(lambda: write(str(tmp)))
            os.chmod(tmp, mode)  # again: some writers (safetensors) replace the file they are given
        for path, tmp in temps.items():
            if replace:
                os.replace(tmp, path)
            else:
                rename_noreplace(tmp, path)
                placed.append(path)
    except BaseException as err:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        for path in placed:
            path.unlink(missing_ok=True)
        if isinstance(err, FileExistsError):
            raise FileExistsError(err.errno, "it appeared while svs was writing it (another run?); not replaced, "
                                  "pass --force to replace it", str(err.filename2 or err.filename)) from err
        if isinstance(err, OSError) and err.filename and Path(err.filename) in temps.values():
            target = next(p for p, t in temps.items() if t == Path(err.filename))
            raise OSError(err.errno, f"cannot write it ({err.strerror})", str(target)) from err
        raise


def rename_noreplace(src: PathLike, dst: PathLike) -> None:
    """Renames ``src`` to ``dst`` unless ``dst`` exists (``FileExistsError``), atomically:
    Linux's ``renameat2(RENAME_NOREPLACE)``; where it is missing, a file is linked then unlinked
    (a link never replaces) and a folder is renamed, which fails onto a folder that is not empty."""
    src, dst = os.fspath(src), os.fspath(dst)
    libc = _libc()
    if libc is not None:
        if libc.renameat2(-100, src.encode(), -100, dst.encode(), 1) == 0:  # AT_FDCWD, RENAME_NOREPLACE
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(code, os.strerror(code), src, None, dst)
    if os.path.isdir(src):
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), src, None, dst)
        os.rename(src, dst)
    else:
        os.link(src, dst)
        os.unlink(src)


def _libc():
    """The C library, if it has renameat2 (glibc 2.28+)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.renameat2  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def claim(path: PathLike) -> Iterator[None]:
    """Holds ``path`` for this process while it writes it: a lock file ``.NAME.svs-lock`` beside it,
    created exclusively, holding host, pid and the pid's start time. A second run on the same output
    fails with one line (``FileExistsError``) while the first lives; the lock of a process that is
    gone (a SIGKILLed run) is taken over, and that run's temporaries of ``path`` are removed (only
    names :func:`temp_path` makes for it)."""
    path = Path(path)
    lock = path.with_name(f".{path.name}.svs-lock")
    mine = _process_mark(os.getpid())
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            try:
                owner = lock.read_text()
            except FileNotFoundError:
                continue
            host, pid = (owner.split() + ["?", "?"])[:2]  # "?": a lock just created, not yet written
            if host != mine.split()[0] or not pid.isdigit() or _process_mark(int(pid)) == owner.strip():
                raise FileExistsError(errno.EEXIST, f"is being written by process {pid} on {host} (its lock "
                                      f"{lock.name}; remove it if no such run is active)", str(path)) from None
            for item in path.parent.iterdir():  # the dead run's temporaries
                if _is_temp_of(path, item.name):
                    (shutil.rmtree if item.is_dir() and not item.is_symlink() else os.unlink)(item)
            lock.unlink(missing_ok=True)
    else:
        raise FileExistsError(errno.EEXIST, f"its lock {lock.name} keeps changing (another run?)", str(path))
    try:
        try:
            os.write(fd, mine.encode())
        finally:
            os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def _process_mark(pid: int) -> str:
    """``host pid start-time`` of a live process (start time from /proc, so a reused pid differs);
    "" when there is no such process."""
    try:
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19] if pid > 0 else None
    except (OSError, IndexError):
        start = None
    if pid > 0 and start is None and sys.platform != "linux":
        try:
            os.kill(pid, 0)
            start = "?"
        except ProcessLookupError:
            pass
        except PermissionError:
            start = "?"
    return f"{socket.gethostname()} {pid} {start}" if start is not None else ""
