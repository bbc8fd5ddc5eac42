"""A strict reader of safetensors headers, checked whole against the file before any tensor is read.

safetensors checks a header lazily: an unknown dtype, overlapping ``data_offsets`` or bytes the
header does not cover surface only when (or if) a tensor is read, as an error of its own kind.
:func:`read_header` parses the 8-byte length and the JSON header itself and checks every entry
against the format's rules and the file's size, so that a damaged or hostile file is one
:class:`~svs.io.CheckpointError` naming the file and the tensor or key at fault, before any work.
:func:`read_tensor` reads one tensor's bytes with plain reads (no mmap: a file truncated while it
is read would kill the process with SIGBUS), failing with the same error if the file changed.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
from pathlib import Path
from typing import BinaryIO, Dict, Iterable, Tuple

import torch

from .io import CheckpointError

# Every dtype of the safetensors format with a whole number of bytes per element, and its torch dtype.
DTYPES: Dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "F8_E8M0": torch.float8_e8m0fnu,
    "C64": torch.complex64,
}
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor of a shard: its dtype (safetensors' name), shape and byte range in the file."""

    shard: str
    dtype: str
    shape: Tuple[int, ...]
    start: int
    end: int


def unique_keys(where: str):
    """``object_pairs_hook`` refusing a key listed twice (json would keep the last silently)."""
    def hook(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise CheckpointError(f"{where}: {key!r} is listed twice")
            seen[key] = value
        return seen
    return hook


def json_type(value) -> str:
    """The JSON name of a parsed value's type (for messages: "a JSON array, not an object")."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), "null")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_header(path: Path) -> Tuple[int, Dict[str, Entry], bytes]:
    """The data offset, the entries (in file order) and the raw header bytes of the safetensors
    file ``path``, after checking: a header length within the file, a UTF-8 JSON object, string
    ``__metadata__`` values, a known dtype, non-negative integer dims and offsets, a byte range
    that matches shape x dtype, and byte ranges that tile the data section exactly (no overlap,
    no gap, nothing past the end). Raises :class:`~svs.io.CheckpointError` naming the file and
    the tensor or key; ``OSError`` as ``open()`` would."""
    path = Path(path)
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > min(size - 8, MAX_HEADER_BYTES):
            raise CheckpointError(f"{path} is not a safetensors file (no valid header)"
                                  + (f": its header length {n} is beyond the file's {size} bytes" if n > size - 8 else ""))
        raw = f.read(n)
    if len(raw) != n:
        raise CheckpointError(f"{path} changed while it was read (truncated)")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=unique_keys(str(path)))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not UTF-8 JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is a JSON {json_type(header)}, not an object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path}: __metadata__ must be an object of strings")
    entries = {name: _entry(path, name, info, 8 + n) for name, info in header.items()}
    pos = 8 + n
    for name, e in sorted(entries.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if e.start != pos:
            raise CheckpointError(f"{path}: tensor {name!r} starts at data offset {e.start - 8 - n}, expected "
                                  f"{pos - 8 - n} ({'it overlaps the tensor before it' if e.start < pos else 'bytes before it belong to no tensor'})")
        pos = e.end
    if pos != size:
        raise CheckpointError(f"{path} is truncated: its header needs {pos} bytes, the file has {size}" if pos > size else
                              f"{path}: its last {size - pos} bytes belong to no tensor (not a safetensors file)")
    return 8 + n, dict(sorted(entries.items(), key=lambda kv: kv[1].start)), raw


def _entry(path: Path, name: str, info, data_start: int) -> Entry:
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise CheckpointError(f"{where}: malformed header entry (expected dtype, shape and data_offsets)")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(f"{where} has dtype {dtype!r}, which svs does not know ({', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(f"{where} has shape {shape!r}; expected a list of integers >= 0")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise CheckpointError(f"{where} has data_offsets {offsets!r}; expected [begin, end] with 0 <= begin <= end")
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(f"{where} has {offsets[1] - offsets[0]} bytes for shape {shape} {dtype} ({nbytes} expected)")
    return Entry(path.name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading if it is a regular file (or a symlink to one); a FIFO, device
    or socket is a :class:`~svs.io.CheckpointError` (opened without blocking, so a FIFO with no
    writer cannot hang the run). ``OSError`` as ``open()`` would."""
    f = open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK))  # f.name: the path, for errors
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise CheckpointError(f"{path} is not a regular file (a FIFO, device or socket)")
    return f


def read_tensors(path: Path, entries: Dict[str, Entry], names: Iterable[str]) -> Dict[str, torch.Tensor]:
    """The named tensors of the checked file ``path`` (its entries from :func:`read_header`), in
    the order of ``names``, by plain reads (not mmap: a file cut short meanwhile is an error, not
    SIGBUS)."""
    with open_regular(path) as f:
        return {name: read_tensor(f, entries[name]) for name in names}


def read_tensor(f: BinaryIO, entry: Entry) -> torch.Tensor:
    """The tensor of ``entry`` from the open file ``f`` (a new CPU tensor), read with plain reads;
    a file that has become shorter than its header says is a :class:`~svs.io.CheckpointError`."""
    data = torch.empty(entry.end - entry.start, dtype=torch.uint8)
    f.seek(entry.start)
    got = f.readinto(memoryview(data.numpy()))
    if got != data.numel():
        raise CheckpointError(f"{f.name} changed while it was read: tensor data ends at byte {entry.start + got}, "
                              f"its header says {entry.end} (truncated)")
    return data.view(DTYPES[entry.dtype]).reshape(entry.shape)
