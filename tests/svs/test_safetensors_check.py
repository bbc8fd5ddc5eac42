"""The strict safetensors header check. README promise: "Every ordinary mistake (... a corrupt or
truncated file ...) is one line on stderr and exit status 2", and for directories "A missing or
truncated shard, a file that is not safetensors ... is one line naming the file and tensor": every
way a header can be malformed is found before any tensor is read, naming the file and the tensor
or key. Files are built byte by byte from a header dict, so each case breaks exactly one rule."""
import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from svs.io import CheckpointError
from svs.safetensors_check import DTYPES, read_header, read_tensor, read_tensors


def raw_file(path, header, data: bytes, length=None):
    """A safetensors file with ``header`` (a dict, or raw bytes) and ``data``; ``length`` overrides
    the 8-byte header length."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head) if length is None else length) + head + data)
    return path


GOOD = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "F16", "shape": [3], "data_offsets": [16, 22]}}


def with_entry(name, **change):
    header = json.loads(json.dumps(GOOD))
    header[name].update(change)
    return header


# (header, data, what the one-line message must contain)
MALFORMED = {
    "overlapping offsets": (with_entry("b", data_offsets=[12, 18]), bytes(18), "'b' starts at data offset 12, expected 16"),
    "bytes no tensor covers (gap)": (with_entry("b", data_offsets=[20, 26]), bytes(26), "'b' starts at data offset 20"),
    "trailing bytes": (GOOD, bytes(30), "last 8 bytes belong to no tensor"),
    "data past the end": (GOOD, bytes(20), "is truncated"),
    "unknown dtype": (with_entry("b", dtype="F7"), bytes(22), "'b' has dtype 'F7'"),
    "dtype not a string": (with_entry("b", dtype=3), bytes(22), "'b' has dtype 3"),
    "negative dim": (with_entry("a", shape=[-2, -2]), bytes(22), "'a' has shape [-2, -2]"),
    "float dim": (with_entry("a", shape=[2.0, 2]), bytes(22), "'a' has shape [2.0, 2]"),
    "bool dim": (with_entry("a", shape=[True, 4]), bytes(22), "'a' has shape [True, 4]"),
    "shape not a list": (with_entry("a", shape="2x2"), bytes(22), "'a' has shape '2x2'"),
    "size mismatch": (with_entry("a", shape=[2, 3]), bytes(22), "'a' has 16 bytes for shape [2, 3] F32"),
    "offsets reversed": (with_entry("a", data_offsets=[16, 0]), bytes(22), "'a' has data_offsets [16, 0]"),
    "offsets not integers": (with_entry("a", data_offsets=["0", "16"]), bytes(22), "'a' has data_offsets"),
    "entry missing a key": ({"a": {"dtype": "F32", "shape": [4]}}, bytes(16), "'a': malformed header entry"),
    "entry not an object": ({"a": [1, 2]}, bytes(0), "'a': malformed header entry"),
    "header a list": (b"[1, 2]", b"", "not an object"),
    "metadata not strings": ({"__metadata__": {"k": 1}, **GOOD}, bytes(22), "__metadata__ must be an object of strings"),
    "key twice": (b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "a": {}}', bytes(1), "'a' is listed twice"),
    "header not JSON": (b"{not json}", bytes(4), "header is not UTF-8 JSON"),
    "header not UTF-8": (b'{"\xff": 1}', b"", "header is not UTF-8 JSON"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_every_malformed_header_is_one_error_naming_file_and_tensor(case, tmp_path):
    """Promise: a corrupt file is one error naming the file (and the tensor), before any read."""
    header, data, message = MALFORMED[case]
    path = raw_file(tmp_path / "m.safetensors", header, data)
    with pytest.raises(CheckpointError) as info:
        read_header(path)
    text = str(info.value)
    assert str(path) in text and message in text and "\n" not in text, text


@pytest.mark.parametrize("length", [2 ** 40, 10_000, 1])
def test_header_length_beyond_the_file(length, tmp_path):
    """Promise: a truncated or random file is one line naming it (a length past the file's end)."""
    path = raw_file(tmp_path / "m.safetensors", GOOD, bytes(22), length=length)
    with pytest.raises(CheckpointError, match="is not a safetensors file"):
        read_header(path)


def test_a_valid_file_reads_as_safetensors_writes_it(tmp_path):
    """The check accepts what safetensors writes (every dtype it knows, empty tensors, metadata)."""
    tensors = {name: torch.zeros(2, 3, dtype=dtype) for name, dtype in DTYPES.items()}
    tensors["empty"] = torch.zeros(0, 5)
    path = tmp_path / "all.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    start, entries, raw = read_header(path)
    assert set(entries) == set(tensors) and start == 8 + len(raw)
    with open(path, "rb") as f:
        for name, t in tensors.items():
            assert torch.equal(read_tensor(f, entries[name]).view(torch.uint8), t.view(torch.uint8)), name


def test_a_file_truncated_after_the_check_is_one_error(tmp_path):
    """Promise: a truncated file is one error naming it, also when it shrinks after the check."""
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(64), "b": torch.ones(64)}, str(path))
    _, entries, _ = read_header(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=f"{path} changed while it was read"):
        read_tensors(path, entries, ["a", "b"])  # as every reader does: through open_regular


def test_not_a_regular_file(tmp_path):
    """Promise: one line naming the file, for a FIFO named like a shard too (no writer: the run
    must not hang opening it)."""
    import os

    fifo = tmp_path / "m.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="is not a regular file"):
        read_header(fifo)
