"""svs.io: what loads without consent, what each unreadable file is reported as, atomic writes."""
import os
import stat

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from svs import io
from tests.reference import Payload


def test_formats_load_without_consent(tmp_path):
    model = nn.Linear(3, 2)
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    torch.save({**model.state_dict(), "epoch": 3}, tmp_path / "m.pt")
    assert io.load(tmp_path / "m.safetensors").format == "safetensors"
    ckpt = io.load(tmp_path / "m.pt")
    assert ckpt.format == "state_dict" and ckpt.obj["epoch"] == 3 and set(ckpt.tensors()) == {"weight", "bias"}


def test_pickled_module_needs_trust_pickle(tmp_path, capsys):
    torch.save(nn.Linear(3, 2), tmp_path / "m.pt")
    with pytest.raises(io.CheckpointError, match=r"holds pickled Python objects \(torch\.nn\..*Linear\).*--trust-pickle"):
        io.load(tmp_path / "m.pt")
    ckpt = io.load(tmp_path / "m.pt", trust_pickle=True)
    assert ckpt.format == "module" and isinstance(ckpt.obj, nn.Linear)
    assert "runs code from the file" in capsys.readouterr().err


def test_no_code_runs_without_consent(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"w": torch.zeros(2, 2), "x": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(io.CheckpointError, match=r"pickled Python objects \(_?io\.open\)"):
        io.load(tmp_path / "evil.pt")
    assert not marker.exists()
    io.load(tmp_path / "evil.pt", trust_pickle=True)  # consent given: the code runs
    assert marker.exists()


def test_unreadable_files_are_named_as_such(tmp_path):
    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "good.pt")
    save_file({"w": torch.ones(4, 4)}, str(tmp_path / "good.safetensors"))
    good_pt, good_st = (tmp_path / "good.pt").read_bytes(), (tmp_path / "good.safetensors").read_bytes()
    files = {
        "random.pt": os.urandom(4096),
        "truncated.pt": good_pt[: len(good_pt) // 2],
        "empty.pt": b"",
        "truncated.safetensors": good_st[:-5],
        "random.safetensors": os.urandom(100),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        pattern = "is truncated|is not a safetensors file" if name.endswith(".safetensors") else "not a readable PyTorch checkpoint"
        with pytest.raises(io.CheckpointError, match=pattern):
            io.load(tmp_path / name, trust_pickle=True)  # trust does not turn corrupt data into code
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(io.CheckpointError, match="expected a state dict or an nn.Module, got list"):
        io.load(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError):
        io.load(tmp_path / "missing.pt")
    for suffix in ("", ".safetensors"):
        (tmp_path / f"dir{suffix}").mkdir()
        with pytest.raises(IsADirectoryError):
            io.load(tmp_path / f"dir{suffix}")


def test_failed_or_interrupted_write_leaves_nothing(tmp_path):
    keep = tmp_path / "keep.bin"
    keep.write_bytes(b"old")

    def partial_then(exc):
        def write(tmp):
            with open(tmp, "wb") as f:
                f.write(b"partial")
            raise exc
        return write

    for exc in (OSError(28, "No space left on device"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            io.atomic_write_all({tmp_path / "new.bin": lambda tmp: open(tmp, "wb").close(), keep: partial_then(exc)})
        assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.bin"] and keep.read_bytes() == b"old"


def test_write_error_names_the_target_not_the_temporary_file(tmp_path):
    def fail(tmp):
        raise PermissionError(13, "Permission denied", tmp)

    with pytest.raises(PermissionError, match="cannot write it") as info:
        io.atomic_write(tmp_path / "out.pt", fail)
    assert info.value.filename == str(tmp_path / "out.pt")


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_the_umask_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        io.save(io.Checkpoint("state_dict", {"w": torch.ones(2, 2)}), tmp_path / "a.safetensors")
        io.atomic_write(tmp_path / "b.json", lambda tmp: open(tmp, "w").write("{}"))
    finally:
        os.umask(old)
    for name in ("a.safetensors", "b.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode


def test_replaced_file_keeps_its_mode_and_temp_keeps_the_suffix(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    target.chmod(0o640)
    seen = []
    io.atomic_write(target, lambda tmp: (seen.append(tmp), open(tmp, "wb").write(b"new")))
    assert seen[0].endswith(".png") and seen[0] != str(target)
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o640


def test_safetensors_header_metadata_is_kept(tmp_path):
    from safetensors import safe_open

    save_file({"a.weight": torch.randn(3, 3)}, tmp_path / "m.safetensors", metadata={"format": "pt", "origin": "x"})
    ckpt = io.load(tmp_path / "m.safetensors")
    io.save(ckpt, tmp_path / "out.safetensors")
    torch.save({"a.weight": torch.randn(3, 3)}, tmp_path / "m.pt")
    io.save(io.load(tmp_path / "m.pt"), tmp_path / "from_pt.safetensors")
    with safe_open(tmp_path / "out.safetensors", "pt") as f, safe_open(tmp_path / "from_pt.safetensors", "pt") as g:
        assert f.metadata() == {"format": "pt", "origin": "x"} and g.metadata() == {"format": "pt"}


def test_tensors_sharing_memory_are_written_to_safetensors(tmp_path):
    """Promise: a state dict is written to .safetensors whatever memory its tensors share: full
    aliases once (recorded as save_model does, {alias: kept}), partial views as copies."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    base = torch.arange(12.0).reshape(3, 4)
    state = {"a": base, "alias": base, "row": base[1], "other": torch.ones(2)}
    io.save(io.Checkpoint("state_dict", state), tmp_path / "tied.safetensors")
    with safe_open(str(tmp_path / "tied.safetensors"), "pt") as f:
        metadata = f.metadata()
    loaded = load_file(str(tmp_path / "tied.safetensors"))
    assert metadata.pop("format") == "pt"  # beside the aliases, what torch's writers put there
    kept = metadata and next(iter(metadata.values()))
    assert metadata == {({"a", "alias"} - {kept}).pop(): kept} and kept in ("a", "alias")
    assert set(loaded) == {kept, "row", "other"} and torch.equal(loaded["row"], base[1])

    views = {"left": base[:, :2], "right": base[:, 2:]}  # no name covers the storage: copies
    io.save(io.Checkpoint("state_dict", views), tmp_path / "views.safetensors")
    assert all(torch.equal(load_file(str(tmp_path / "views.safetensors"))[k], v) for k, v in views.items())


def test_rename_noreplace_never_replaces(tmp_path):
    """Promise: "refuses an existing output without --force", atomically: the final rename fails on
    a file or folder that appeared meanwhile."""
    for make in (lambda p: p.write_text("x"), lambda p: p.mkdir()):
        src, dst = tmp_path / "src", tmp_path / "dst"
        make(src)
        (dst.mkdir() if src.is_dir() else dst.write_text("theirs"))
        with pytest.raises(FileExistsError):
            io.rename_noreplace(src, dst)
        assert src.exists()
        for p in (src, dst):
            p.rmdir() if p.is_dir() else p.unlink()
        make(src)
        io.rename_noreplace(src, dst)
        assert dst.exists() and not src.exists()
        dst.rmdir() if dst.is_dir() else dst.unlink()


def test_fifo_or_device_input_is_one_error(tmp_path):
    """Promise: a file that is not a checkpoint is one error naming it; a FIFO (with no writer) or a
    device must not hang or stream forever."""
    os.mkfifo(tmp_path / "pipe.pt")
    os.mkfifo(tmp_path / "pipe.safetensors")
    for path in (tmp_path / "pipe.pt", tmp_path / "pipe.safetensors", "/dev/zero"):
        with pytest.raises(io.CheckpointError, match="is not a regular file"):
            io.load(path)
