"""The svs command: every checkpoint format round-trips, the input is never overwritten."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import svs
from svs import io
from svs.cli import main


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4, 2))


def expected_state(preset: str = "ddpm") -> dict:
    state, _ = svs.refine_state_dict(small_model().state_dict(), preset=preset)
    return state


def write(fmt: str, path) -> None:
    model = small_model()
    if fmt == "safetensors":
        save_file(model.state_dict(), str(path))
    elif fmt == "state_dict":
        torch.save(model.state_dict(), path)
    else:
        torch.save(model, path)


@pytest.mark.parametrize("fmt,suffix", [("safetensors", ".safetensors"), ("state_dict", ".pt"), ("module", ".pt")])
def test_refine_round_trips_every_format(fmt, suffix, tmp_path, capsys):
    src, dst = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    write(fmt, src)
    original = src.read_bytes()
    assert main(["refine", str(src), "-o", str(dst), "--preset", "ddpm", "--report", str(tmp_path / "r.json")]) == 0
    assert src.read_bytes() == original
    out = io.load(dst)
    assert out.format == fmt
    got = out.obj.state_dict() if fmt == "module" else out.obj
    for k, v in expected_state().items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert json.loads((tmp_path / "r.json").read_text())["totals"]["weights"] == 3
    printed = capsys.readouterr()
    assert "0.weight" in printed.out and "wrote" in printed.out
    if fmt == "module":
        assert "weights_only=False" in printed.err


def test_module_to_safetensors(tmp_path):
    src, dst = tmp_path / "m.pt", tmp_path / "m.safetensors"
    write("module", src)
    assert main(["refine", str(src), "-o", str(dst), "--preset", "ddpm", "-q"]) == 0
    got = load_file(str(dst))
    for k, v in expected_state().items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)


def test_never_overwrites(tmp_path):
    src = tmp_path / "w.safetensors"
    write("safetensors", src)
    original = src.read_bytes()
    with pytest.raises(SystemExit, match="refusing to overwrite the input"):
        main(["refine", str(src), "-o", str(src), "--force"])
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"keep me")
    with pytest.raises(SystemExit, match="exists; pass --force"):
        main(["refine", str(src), "-o", str(other)])
    assert other.read_bytes() == b"keep me" and src.read_bytes() == original


def test_dry_run_writes_nothing(tmp_path, capsys):
    src, dst = tmp_path / "w.pt", tmp_path / "o.pt"
    write("state_dict", src)
    assert main(["refine", str(src), "-o", str(dst), "--dry-run"]) == 0
    assert not dst.exists() and "would refine" in capsys.readouterr().out


def test_bad_checkpoint_fails_cleanly(tmp_path, capsys):
    src, dst = tmp_path / "w.safetensors", tmp_path / "o.safetensors"
    state = small_model().state_dict()
    state["2.weight"][0, 0] = float("nan")
    save_file(state, str(src))
    assert main(["refine", str(src), "-o", str(dst)]) == 2
    assert not dst.exists()
    assert "parameter '2.weight'" in capsys.readouterr().err


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "x.bin"

    def boom(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        io.atomic_write(target, boom)
    assert list(tmp_path.iterdir()) == []


def test_inspect_prints_stats_and_plots(tmp_path, capsys):
    src = tmp_path / "w.safetensors"
    write("safetensors", src)
    plot = tmp_path / "spectrum.png"
    assert main(["inspect", str(src), "--preset", "ddpm", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "0.weight" in out and "kappa" in out and "3 weights" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_console_script_is_installed():
    from pathlib import Path

    script = Path(sys.executable).parent / "svs"
    assert script.exists(), "pip install -e . should install the svs console script"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "refine" in result.stdout and "demo" in result.stdout
