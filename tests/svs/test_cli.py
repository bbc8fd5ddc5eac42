"""The svs command: every checkpoint format round-trips, the input is never overwritten, every
ordinary mistake is one line with no file changed or left behind, Ctrl-C stops cleanly."""
import fcntl
import importlib.util
import json
import os
import pty
import select
import shlex
import signal
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import svs
from svs import io
from svs.cli import main

SCRIPT = Path(sys.executable).parent / "svs"


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


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones too) with its bytes and mode."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("fmt,suffix", [("safetensors", ".safetensors"), ("state_dict", ".pt"), ("module", ".pt")])
def test_refine_round_trips_every_format(fmt, suffix, tmp_path, capsys):
    src, dst = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    write(fmt, src)
    original = src.read_bytes()
    trust = ["--trust-pickle"] if fmt == "module" else []
    assert main(["refine", str(src), "-o", str(dst), "--preset", "ddpm", "--report", str(tmp_path / "r.json")] + trust) == 0
    assert src.read_bytes() == original
    out = io.load(dst, trust_pickle=fmt == "module")
    assert out.format == fmt
    got = out.obj.state_dict() if fmt == "module" else out.obj
    for k, v in expected_state().items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, dst.name, "r.json"])  # no temporary file
    assert json.loads((tmp_path / "r.json").read_text())["totals"]["weights"] == 3
    printed = capsys.readouterr()
    assert "0.weight" in printed.out and "wrote" in printed.out
    assert ("runs code from the file" in printed.err) == (fmt == "module")


def test_module_to_safetensors(tmp_path):
    src, dst = tmp_path / "m.pt", tmp_path / "m.safetensors"
    write("module", src)
    assert main(["refine", str(src), "-o", str(dst), "--preset", "ddpm", "-q", "--trust-pickle"]) == 0
    got = load_file(str(dst))
    for k, v in expected_state().items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)


def test_dry_run_needs_no_output(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write("state_dict", tmp_path / "w.pt")
    assert main(["refine", "w.pt", "--dry-run"]) == 0
    assert main(["refine", "w.pt", "--dry-run", "-o", "o.pt", "--report", "r.json"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "w.pt"]
    out = capsys.readouterr().out
    assert "would refine" in out and "dry run: nothing written but the report r.json" in out


def test_skipped_tensors_are_reported(tmp_path, capsys):
    state = small_model().state_dict()
    state["2.bias"] = state["2.bias"].long()  # an integer bias: its weight must not be refined alone
    state["extra.weight"] = torch.zeros(0, 4)
    torch.save(state, tmp_path / "w.pt")
    assert main(["refine", str(tmp_path / "w.pt"), "-o", str(tmp_path / "o.pt")]) == 0
    out = capsys.readouterr().out
    assert "its bias is skipped (dtype torch.int64 is not floating point)" in out and "empty tensor" in out
    got = torch.load(tmp_path / "o.pt")
    assert torch.equal(got["2.weight"], state["2.weight"]) and torch.equal(got["2.bias"], state["2.bias"])
    assert not torch.equal(got["0.weight"], state["0.weight"])


def test_version():
    result = subprocess.run([str(SCRIPT), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith(f"svs {svs.__version__} (torch ")
    assert "extension svs_kernels: CUDA kernel " in result.stdout and "; triton " in result.stdout


def test_bare_svs_prints_the_help():
    result = subprocess.run([str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("usage: svs") and "refine" in result.stdout


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder as a user might have it: good checkpoints, broken ones, a pickled module."""
    monkeypatch.chdir(tmp_path)
    write("state_dict", tmp_path / "good.pt")
    write("safetensors", tmp_path / "good.safetensors")
    write("module", tmp_path / "module.pt")
    good, good_st = (tmp_path / "good.pt").read_bytes(), (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "truncated.safetensors").write_bytes(good_st[:-7])
    torch.save([1, 2, 3], tmp_path / "list.pt")
    state = small_model().state_dict()
    state["2.weight"][0, 0] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"))
    (tmp_path / "existing.pt").write_bytes(b"keep me")
    (tmp_path / "folder").mkdir()
    return tmp_path


_MISSING_EXPERIMENTS = [m for m in ("diffusers", "torch_pruning", "sklearn") if importlib.util.find_spec(m) is None]
# The experiment commands (demo, prune, finetune, sample) check their arguments after the extra is
# found; without it they stop at the extra's one-line error, which tests/svs/test_extras.py checks.
needs_experiments = [pytest.mark.skip(reason=f"the 'experiments' extra is not installed ({', '.join(_MISSING_EXPERIMENTS)})")
                     ] if _MISSING_EXPERIMENTS else []
PLOTS = importlib.util.find_spec("matplotlib") is not None
needs_plot = [] if PLOTS else [pytest.mark.skip(reason="the 'plot' extra is not installed (matplotlib)")]

MISTAKES = [
    ("refine nothere.pt -o out.pt", "nothere.pt: No such file or directory"),
    ("refine folder -o out.pt", "folder has no *.safetensors.index.json and 0 .safetensors files"),
    ("refine random.pt -o out.pt", "random.pt is not a readable PyTorch checkpoint"),
    ("refine truncated.pt -o out.pt", "truncated.pt is not a readable PyTorch checkpoint"),
    ("refine empty.pt -o out.pt", "empty.pt is not a readable PyTorch checkpoint"),
    ("refine truncated.safetensors -o out.safetensors", "truncated.safetensors is truncated"),
    ("refine list.pt -o out.pt", "expected a state dict or an nn.Module, got list"),
    ("refine module.pt -o out.pt", "holds pickled Python objects"),
    ("inspect module.pt", "--trust-pickle"),
    pytest.param("sample module.pt -o s.png", "--trust-pickle", marks=needs_experiments),
    ("refine good.pt -o out.pt --include (", "include '(' is not a valid regular expression"),
    ("refine good.pt -o out.pt --exclude [", "exclude '[' is not a valid regular expression"),
    ("refine good.pt -o out.pt --include nomatch", "selects no weight"),
    ("refine good.pt -o out.pt --map cube", "unknown map 'cube'"),
    ("refine good.pt -o out.pt --method magic", "magic"),
    ("refine nan.safetensors -o out.safetensors", "parameter '2.weight'"),
    ("refine good.pt -o missing/out.pt", "cannot write missing/out.pt: folder missing does not exist"),
    ("refine good.pt -o good.safetensors/out.pt", "folder good.safetensors does not exist"),
    ("refine good.pt -o folder", "folder is a folder; give a file name"),
    ("refine good.pt -o existing.pt", "existing.pt exists; pass --force to replace it"),
    ("refine good.pt -o good.pt --force", "refusing to overwrite the input good.pt"),
    ("refine good.pt -o ./good.pt --force", "refusing to overwrite the input good.pt"),
    ("refine good.pt", "give the output file with -o (or --dry-run to only report)"),
    ("refine good.pt -o out.pt --report out.pt", "--report out.pt is the output"),
    ("refine good.pt -o out.pt --report missing/r.json", "folder missing does not exist"),
    pytest.param("inspect good.pt --plot spectrum.xyz", "unknown image type .xyz", marks=needs_plot),
    ("inspect good.pt --plot missing/spectrum.png", "folder missing does not exist"),
    ("inspect good.pt --include nomatch", "no weight selected"),
    pytest.param("finetune good.pt -o existing.pt", "existing.pt exists", marks=needs_experiments),
    pytest.param("demo -o existing.pt", "existing.pt is a file; -o/--output takes a folder", marks=needs_experiments),
    pytest.param("prune good.pt -o p.pt", "does not hold the bundled teacher's architecture", marks=needs_experiments),
]


@pytest.mark.parametrize("typed,message", MISTAKES)
def test_mistake_is_one_line_and_changes_nothing(typed, message, workdir, capsys):
    before = snapshot(workdir)
    argv = shlex.split(typed)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"svs {argv[0]}: error: ") and message in lines[0], err
    assert snapshot(workdir) == before


def test_cli_fails_on_a_failed_certificate_unless_told_not_to_check(tmp_path, capsys):
    torch.save({"a.weight": torch.randn(8, 6), "a.bias": torch.randn(8)}, tmp_path / "in.pt")
    out = tmp_path / "out.pt"
    torch.ops.svs._corrupt_next("reverse", 0)
    assert main(["refine", str(tmp_path / "in.pt"), "-o", str(out), "-q"]) == 2 and not out.exists()
    assert "parameter 'a.weight'" in capsys.readouterr().err
    torch.ops.svs._corrupt_next("reverse", 0)
    assert main(["refine", str(tmp_path / "in.pt"), "-o", str(out), "-q", "--no-certify"]) == 0 and out.exists()


def test_debug_shows_the_traceback(workdir, monkeypatch):
    with pytest.raises(io.CheckpointError):
        main(["refine", "random.pt", "-o", "out.pt", "--debug"])
    monkeypatch.setenv("SVS_DEBUG", "1")
    with pytest.raises(io.CheckpointError):
        main(["refine", "random.pt", "-o", "out.pt"])


def test_pickled_code_runs_only_with_trust_pickle(workdir, capsys):
    from tests.reference import Payload

    marker = workdir / "code-ran"
    torch.save({"w": torch.zeros(2, 2), "x": Payload(marker)}, workdir / "evil.pt")
    assert main(["refine", "evil.pt", "-o", "out.pt"]) == 2
    assert "--trust-pickle" in capsys.readouterr().err and not marker.exists()
    main(["refine", "evil.pt", "-o", "out.pt", "--trust-pickle"])
    assert marker.exists()


def test_closed_pipe_is_one_line(workdir):
    proc = subprocess.Popen([str(SCRIPT), "inspect", "good.pt"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is printed, as with `| head -0`
    err = proc.stderr.read().decode()
    assert proc.wait() == 2
    assert err.strip() == "svs inspect: error: output closed early (broken pipe)"


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_interrupt_stops_cleanly(tmp_path, sig, code, word):
    """A signal while the progress bar runs (stderr is a terminal): one line, exit 128 + signal,
    no output and no temporary file. 8 weights of 1024 x 1024 take seconds, so it lands mid-run."""
    torch.manual_seed(0)
    torch.save({f"l{i}.weight": torch.randn(1024, 1024) for i in range(8)}, tmp_path / "big.pt")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a new pty is 0 columns wide
    proc = subprocess.Popen([str(SCRIPT), "refine", "big.pt", "-o", "out.pt"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    seen = b""
    while b"SVS" not in seen:  # the bar is up: the refine has started
        ready, _, _ = select.select([master], [], [], 120)
        assert ready, f"no progress bar: {seen!r}"
        seen += os.read(master, 4096)
    proc.send_signal(sig)
    rc = proc.wait(timeout=120)
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert rc == code
    assert f"svs refine: {word}; nothing was written" in seen.decode(errors="replace")
    assert b"Traceback" not in seen
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.pt"]


def test_inspect_prints_stats_and_plots(tmp_path, capsys):
    """The plot where the plot extra is installed; the table and summary in any case."""
    src = tmp_path / "w.safetensors"
    write("safetensors", src)
    plot = tmp_path / "spectrum.png"
    assert main(["inspect", str(src), "--preset", "ddpm"] + (["--plot", str(plot)] if PLOTS else [])) == 0
    out = capsys.readouterr().out
    assert "0.weight" in out and "kappa" in out and "3 weights" in out
    assert not PLOTS or plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spectrum.png"] * PLOTS + ["w.safetensors"]


def test_console_script_is_installed():
    assert SCRIPT.exists(), "pip install -e . should install the svs console script"
    result = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "refine" in result.stdout and "demo" in result.stdout


def test_experiment_commands_join_through_their_entry_point():
    """svs.cli does not import svs.experiments (tests/test_layers.py): the demo and the pipeline's
    commands come from the svs.commands entry point that pyproject.toml registers."""
    from importlib.metadata import entry_points

    from svs.cli import COMMANDS

    assert [e.value for e in entry_points(group=COMMANDS)] == ["svs.experiments.cli:add_experiment_commands"]
    assert {"prune", "finetune", "sample", "demo"} <= set(subcommands())


def test_core_commands_work_without_the_registered_ones(workdir, capsys, monkeypatch):
    """An entry point that cannot be imported (a package half installed) is left out: refine and
    inspect work, and the help lists what is there."""
    import importlib.metadata

    from svs.cli import COMMANDS

    broken = importlib.metadata.EntryPoint(name="broken", value="svs_no_such_package.cli:add", group=COMMANDS)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [broken] if group == COMMANDS else [])
    assert set(subcommands()) == {"svs", "refine", "inspect"}
    assert main(["refine", "good.pt", "-o", "out.pt", "-q"]) == 0 and Path("out.pt").exists()
    assert main([]) == 0 and "demo" not in capsys.readouterr().out


# ---- output errors on every output kind, colliding runs, tied tensors ---------------------------
OUTPUT_KINDS = {  # argv after "refine good.pt", and the output it names
    ".pt": (["-o", "out.pt"], "out.pt"),
    ".safetensors": (["-o", "out.safetensors"], "out.safetensors"),
    "--report": (["--dry-run", "--report", "r.json"], "r.json"),
}


def limited(max_bytes: int):
    """A preexec_fn: files of the process may not grow past ``max_bytes`` (writes then fail with
    EFBIG, as on a full disk, with no root or mount needed)."""
    import resource

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


@pytest.mark.parametrize("kind", list(OUTPUT_KINDS))
def test_full_disk_is_one_line_and_leaves_nothing(kind, workdir):
    """Promise: "an unwritable output ... is one line on stderr and exit status 2", and no output
    or temporary file is left (a full disk simulated with RLIMIT_FSIZE)."""
    args, _ = OUTPUT_KINDS[kind]
    before = snapshot(workdir)
    proc = subprocess.run([sys.executable, "-m", "svs.cli", "refine", "good.pt", *args], capture_output=True,
                          text=True, cwd=workdir, preexec_fn=limited(300), env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "File too large" in lines[0], proc.stderr
    assert snapshot(workdir) == before


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 kB tmpfs (needs root and mount rights; skipped without): a real full disk."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("kind", list(OUTPUT_KINDS))
def test_really_full_or_read_only_disk(kind, workdir, tiny_fs):
    """Promise: a full (ENOSPC) or read-only (EROFS) output file system is one line, exit 2, nothing left."""
    args, name = OUTPUT_KINDS[kind]
    (tiny_fs / "filler").write_bytes(bytes(60_000))
    args = [str(tiny_fs / name) if a == name else a for a in args]
    torch.save({"0.weight": torch.randn(64, 256)}, workdir / "big.pt")  # its output needs more than the 4 kB left
    for remount, message in (("rw", "No space left on device"), ("ro", f"folder {tiny_fs} is not writable")):
        subprocess.run(["mount", "-o", f"remount,{remount}", str(tiny_fs)], check=True)
        code, err = run_main("refine", "big.pt", *args)
        assert code == 2 and len(err) == 1 and message in err[0], err
        assert sorted(p.name for p in tiny_fs.iterdir()) == ["filler"]


def run_main(*argv):
    import contextlib
    import io as stdio

    err = stdio.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdio.StringIO()):
        code = main([str(a) for a in argv])
    return code, err.getvalue().strip().splitlines()


@pytest.mark.parametrize("kind", list(OUTPUT_KINDS))
def test_quota_and_read_only_errors_while_writing(kind, workdir):
    """Promise: an output error while writing (quota EDQUOT, read-only EROFS, EACCES) is one line
    naming the output, exit 2, nothing left."""
    import errno

    args, name = OUTPUT_KINDS[kind]
    before = snapshot(workdir)
    real_open = open
    for code_ in (errno.EDQUOT, errno.EROFS, errno.EACCES):
        def failing_open(file, mode="r", *a, **k):
            if "w" in mode and ".svs-tmp-" in str(file):
                raise OSError(code_, os.strerror(code_), str(file))
            return real_open(file, mode, *a, **k)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("builtins.open", failing_open)
            mp.setattr("io.open", failing_open)  # pathlib's
            if name.endswith(".safetensors"):  # safetensors writes from Rust: its error text, as it reports it
                from safetensors import SafetensorError

                def failing_save(*a, **k):
                    raise SafetensorError(f"Error while serializing: I/O error: {os.strerror(code_)} (os error {code_})")
                mp.setattr("safetensors.torch.save_file", failing_save)
            code, err = run_main("refine", "good.pt", *args)
        assert code == 2 and len(err) == 1 and f"{name}: cannot write it ({os.strerror(code_)})" in err[0], err
        assert snapshot(workdir) == before


@pytest.mark.parametrize("kind", list(OUTPUT_KINDS))
def test_output_being_written_by_another_run(kind, workdir):
    """Promise: an existing output is replaced only with --force, and never while another run
    writes it: one line, exit 2, whatever --force says."""
    args, name = OUTPUT_KINDS[kind]
    with io.claim(workdir / name):
        for force in ([], ["--force"]):
            code, err = run_main("refine", "good.pt", *args, *force)
            assert code == 2 and len(err) == 1 and f"{name}: is being written by process {os.getpid()}" in err[0], err
    assert not (workdir / name).exists()


@pytest.mark.parametrize("kind", list(OUTPUT_KINDS))
def test_output_appearing_during_the_run_is_not_replaced(kind, workdir, monkeypatch):
    """Promise: "refuses an existing output without --force", also one that appears while the run
    works (another run finished first): one line, exit 2, the other file kept, nothing of ours left."""
    import svs.cli as cli

    args, name = OUTPUT_KINDS[kind]
    real = cli.refine_state_dict

    def other_run_finishes(*a, **k):
        (workdir / name).write_text("theirs")
        return real(*a, **k)

    monkeypatch.setattr(cli, "refine_state_dict", other_run_finishes)
    before = snapshot(workdir)
    code, err = run_main("refine", "good.pt", *args)
    assert code == 2 and len(err) == 1 and "appeared while svs was writing it" in err[0], err
    assert (workdir / name).read_text() == "theirs"
    assert {k for k in snapshot(workdir) if k not in before} == {name}


def test_symlinked_outputs_are_resolved_first(workdir):
    """Promise: outputs are checked before any work: a dangling symlink is one line; a symlink to a
    file is refused without --force and, with it, the target is replaced and the link kept."""
    (workdir / "dangling.pt").symlink_to(workdir / "missing" / "x.pt")
    code, err = run_main("refine", "good.pt", "-o", "dangling.pt")
    assert code == 2 and len(err) == 1 and "dangling.pt is a symlink to" in err[0], err
    (workdir / "link.pt").symlink_to(workdir / "existing.pt")
    assert run_main("refine", "good.pt", "-o", "link.pt")[0] == 2
    assert run_main("refine", "good.pt", "-o", "link.pt", "--force")[0] == 0
    assert (workdir / "link.pt").is_symlink() and io.load(workdir / "existing.pt").format == "state_dict"
    (workdir / "input-link.pt").symlink_to(workdir / "good.pt")
    code, err = run_main("refine", "good.pt", "-o", "input-link.pt", "--force")
    assert code == 2 and "refusing to overwrite the input" in err[0], err


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_tied_tensors_are_written_once(suffix, tmp_path):
    """Promise: svs refine writes the refined checkpoint in the format the output's suffix asks for;
    tensors that share memory (tied weights) are written once, as safetensors' save_model does, and
    load back as the same state dict."""
    from safetensors.torch import load_model, safe_open

    def tied_model():
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
        model[2].weight = model[0].weight
        return model

    model = tied_model()
    torch.save(model.state_dict(), tmp_path / "tied.pt")
    out = tmp_path / f"out{suffix}"
    assert main(["refine", str(tmp_path / "tied.pt"), "-o", str(out), "--exclude", r"^(0|2)\."]) == 0
    fresh = tied_model()
    if suffix == ".safetensors":
        with safe_open(str(out), "pt") as f:
            assert "2.weight" not in f.keys() and f.metadata()["2.weight"] == "0.weight"
        load_model(fresh, str(out))
    else:
        fresh.load_state_dict(torch.load(out))
    expected, _ = svs.refine_state_dict(model.state_dict(), exclude=r"^(0|2)\.")
    assert fresh.state_dict().keys() == expected.keys()
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_killed_runs_temporary_file_is_removed_by_the_next_run(workdir):
    """Promise: an interrupted run leaves no output file: a SIGKILLed run cannot clean up, so the
    next run on the same output recognises its temporary (its name, and the lock of a process that
    is gone) and removes it, leaving other hidden files alone."""
    code = ("import sys, time; from pathlib import Path; from svs.io import claim, temp_path\n"
            "out = Path(sys.argv[1])\n"
            "with claim(out):\n"
            "    temp_path(out).write_bytes(b'partial'); print('ready', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, "out.pt"], stdout=subprocess.PIPE, text=True, cwd=workdir)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (workdir / ".out.pt.mine").write_text("not svs's")
    before = snapshot(workdir)
    assert any(".svs-" in name for name in before)
    assert run_main("refine", "good.pt", "-o", "out.pt")[0] == 0
    after = snapshot(workdir)
    assert {k for k in before if ".svs-" in k} - set(after) == {k for k in before if ".svs-" in k}
    assert ".out.pt.mine" in after and not any(".svs-" in k for k in after)


def test_global_options_go_before_or_after_the_command(workdir):
    for argv in (["--debug", "refine", "random.pt", "-o", "out.pt"], ["refine", "random.pt", "-o", "out.pt", "--debug"]):
        with pytest.raises(io.CheckpointError):
            main(argv)
    assert main(["refine", "random.pt", "-o", "out.pt"]) == 2  # and without it, one line


def subcommands():
    from svs.cli import build_parser

    parser = build_parser()
    return {"svs": parser, **next(a for a in parser._actions if a.dest == "command").choices}


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_option_shows_its_help_default_and_choices(command):
    import argparse

    parser = subcommands()[command]
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        assert action.help, f"svs {command} {action.option_strings[0]} has no help"
        if action.default not in (None, False, argparse.SUPPRESS) and not isinstance(action, argparse._HelpAction):
            assert f"(default: {action.default})" in text, (command, action.option_strings)
        for choice in action.choices or ():
            assert choice in text, (command, action.option_strings, choice)
    if command == "refine":  # open-ended choices are listed in the help
        for name in svs.MAPS + tuple(svs.ops.method_names("cpu")):
            assert name in text, name


def test_corrupt_pt_is_one_line_without_torchs_hints(workdir, capsys):
    for name in ("random.pt", "truncated.pt"):
        assert main(["refine", name, "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "is not a readable PyTorch checkpoint" in err
        assert "documentation" not in err and "http" not in err and "Could this error message be improved" not in err


def test_dry_run_route_says_what_a_run_would_use(workdir, capsys):
    assert main(["refine", "good.pt", "--dry-run", "--report", "dry.json"]) == 0
    assert main(["refine", "good.pt", "-o", "out.pt", "--report", "run.json"]) == 0
    dry, done = (json.loads(Path(f).read_text())["records"] for f in ("dry.json", "run.json"))
    weights = [(d["route"], r["route"]) for d, r in zip(dry, done) if d["role"] == "weight"]
    assert weights and all(d == "auto (not run)" and r.startswith("aten:") for d, r in weights)


def test_inspect_refuses_an_unknown_map_before_any_work(workdir, capsys):
    assert main(["inspect", "good.pt", "--map", "bogus"] + (["--plot", "s.png"] if PLOTS else [])) == 2
    err = capsys.readouterr().err
    assert err.startswith("svs inspect: error: unknown map 'bogus'; expected one of sqrt,") and len(err.splitlines()) == 1
    assert not Path("s.png").exists()
