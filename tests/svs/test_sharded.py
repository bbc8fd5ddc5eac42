"""Sharded Hugging Face style checkpoint directories: streamed refinement, the output layout, and
one test per bad input. Checkpoints are a few hundred kB, generated with fixed seeds."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import svs
from svs import refinement, sharded
from svs.io import CheckpointError
from svs.testing import llama_state_dict, write_hf_dir

SHARD_BYTES = 12_000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama-style model with q/k/v biases in 6 shards; one shard split so that
    ``model.layers.1.self_attn.q_proj.bias`` lies in a different shard from its weight."""
    root = tmp_path_factory.mktemp("ckpt") / "llama"
    state = llama_state_dict()
    names = list(state)
    cut = names.index("model.layers.1.self_attn.q_proj.bias")  # its weight comes just before
    shards = [names[i:min(i + 6, cut)] for i in range(0, cut, 6)] + [names[cut:cut + 8], names[cut + 8:]]
    return write_hf_dir(root, state, shards=shards)


def all_tensors(root: Path):
    out = {}
    for f in sorted(root.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_sharded_equals_single_file(model_dir, tmp_path):
    out = tmp_path / "out"
    report = sharded.refine_dir(model_dir, out, preset="generic")
    state = all_tensors(model_dir)
    expected, single = svs.refine_state_dict(dict(state), preset="generic")
    got = all_tensors(out)
    assert list(got) == list(state)
    for name in state:
        assert torch.equal(got[name], expected[name]), name
    assert {r.name for r in report.records} == {r.name for r in single.records}
    # same files, same names, shards with the same header (names, order, dtypes, offsets)
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in model_dir.iterdir()] + [sharded.RECORD])
    for shard in model_dir.glob("*.safetensors"):
        assert sharded.read_header(out / shard.name)[2] == sharded.read_header(shard)[2]
        assert (out / shard.name).stat().st_size == shard.stat().st_size
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        assert (out / name).read_bytes() == (model_dir / name).read_bytes()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index == json.loads((model_dir / "model.safetensors.index.json").read_text())
    record = sharded.read_record(out)
    assert record.totals()["weights"] == report.totals()["weights"] == 16
    assert record.weights[0].after_max == pytest.approx(report.weights[0].after_max)


def test_single_file_dir_and_embeddings_untouched(tmp_path):
    state = llama_state_dict(layers=1, seed=1)
    src = write_hf_dir(tmp_path / "one", state)
    assert [p.name for p in src.glob("*.safetensors")] == ["model.safetensors"]
    sharded.refine_dir(src, tmp_path / "out", preset="generic", exclude="embed|lm_head")
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert torch.equal(got["model.embed_tokens.weight"], state["model.embed_tokens.weight"])
    assert not torch.equal(got["model.layers.0.mlp.up_proj.weight"], state["model.layers.0.mlp.up_proj.weight"])
    assert not (tmp_path / "out" / "model.safetensors.index.json").exists()


def test_dry_run_writes_nothing(model_dir, tmp_path):
    report = sharded.refine_dir(model_dir, None, dry_run=True)
    assert report.dry_run and report.totals()["weights"] == 16
    assert list(tmp_path.iterdir()) == []


# ---- nothing lost ------------------------------------------------------------------------------
def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir())


def test_existing_out_dir_needs_force(model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(ValueError, match="exists; pass --force"):
        sharded.refine_dir(model_dir, out)
    assert leftovers(out) == ["keep"]
    sharded.refine_dir(model_dir, out, force=True)
    assert "keep" not in leftovers(out) and sharded.RECORD in leftovers(out)
    assert leftovers(tmp_path) == ["out"]


def test_out_dir_inside_model_dir(model_dir):
    with pytest.raises(ValueError, match="inside the model directory"):
        sharded.refine_dir(model_dir, model_dir / "refined")
    with pytest.raises(ValueError, match="holds the model directory"):
        sharded.refine_dir(model_dir, model_dir.parent, force=True)


@pytest.mark.parametrize("failure", [KeyboardInterrupt, svs.RefineError])
def test_interrupted_or_failed_run_leaves_nothing(model_dir, tmp_path, monkeypatch, failure):
    calls = []
    real = refinement.refine_batch

    def second_call_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise failure("parameter 'x' failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(refinement, "refine_batch", second_call_fails)
    before = {p: p.read_bytes() for p in model_dir.iterdir()}
    with pytest.raises(failure):
        sharded.refine_dir(model_dir, tmp_path / "out")
    assert leftovers(tmp_path) == []
    assert {p: p.read_bytes() for p in model_dir.iterdir()} == before


def test_nan_weight_names_the_parameter(tmp_path):
    state = llama_state_dict(layers=1)
    state["model.layers.0.mlp.up_proj.weight"][3, 3] = float("nan")
    src = write_hf_dir(tmp_path / "m", state, max_shard_bytes=8000)
    with pytest.raises(svs.RefineError, match="model.layers.0.mlp.up_proj.weight"):
        sharded.refine_dir(src, tmp_path / "out")
    assert leftovers(tmp_path) == ["m"]


# ---- bad inputs: one test each -----------------------------------------------------------------
@pytest.fixture
def copy_dir(model_dir, tmp_path):
    import shutil

    return Path(shutil.copytree(model_dir, tmp_path / "m"))


def first_shard(root: Path) -> Path:
    return sorted(root.glob("model-*.safetensors"))[0]


def test_index_names_missing_shard(copy_dir, tmp_path):
    first_shard(copy_dir).unlink()
    with pytest.raises(CheckpointError, match="names shard model-00001-of-.*, which is missing"):
        sharded.refine_dir(copy_dir, tmp_path / "out")


def test_truncated_shard(copy_dir, tmp_path):
    shard = first_shard(copy_dir)
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="is truncated"):
        sharded.refine_dir(copy_dir, tmp_path / "out")


def test_shard_not_safetensors(copy_dir, tmp_path):
    torch.save({"a": torch.zeros(3)}, first_shard(copy_dir))
    with pytest.raises(CheckpointError, match="is not a safetensors file"):
        sharded.refine_dir(copy_dir, tmp_path / "out")


def test_tensor_listed_twice_in_index(copy_dir, tmp_path):
    index = copy_dir / "model.safetensors.index.json"
    text = index.read_text()
    entry = '"model.norm.weight": '
    at = text.index(entry)
    line = text[at:text.index("\n", at)].rstrip(",")
    index.write_text(text.replace('"weight_map": {', '"weight_map": {\n    ' + line + ","))
    with pytest.raises(CheckpointError, match="'model.norm.weight' is listed twice"):
        sharded.refine_dir(copy_dir, tmp_path / "out")


def test_tensor_in_two_shards(tmp_path):
    state = llama_state_dict(layers=1)
    names = list(state)
    src = write_hf_dir(tmp_path / "m", state, shards=[names[:4], names[4:]])
    save_file({n: state[n] for n in names[:5]}, str(src / "model-00001-of-00002.safetensors"))
    with pytest.raises(CheckpointError, match=f"{names[4]!r} is listed twice"):
        sharded.refine_dir(src, tmp_path / "out")


def test_non_float_weight(tmp_path):
    state = llama_state_dict(layers=1)
    state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(48, 32, dtype=torch.int8)
    src = write_hf_dir(tmp_path / "m", state, max_shard_bytes=8000)
    with pytest.raises(CheckpointError, match="weight 'model.layers.0.mlp.up_proj.weight' has dtype I8, not floating point"):
        sharded.refine_dir(src, tmp_path / "out")
    assert leftovers(tmp_path) == ["m"]


def test_index_lists_tensor_a_shard_lacks(copy_dir, tmp_path):
    index = copy_dir / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["model.extra.weight"] = first_shard(copy_dir).name
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="lists 'model.extra.weight' in .*, which does not hold it"):
        sharded.refine_dir(copy_dir, tmp_path / "out")


# ---- the command line ----------------------------------------------------------------------------
def test_cli_refine_and_inspect(model_dir, tmp_path, capsys):
    from svs.cli import main

    out, report = tmp_path / "out", tmp_path / "r.json"
    assert main(["refine", str(model_dir), "-o", str(out), "--preset", "transformer", "--report", str(report), "-q"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert json.loads(report.read_text())["totals"]["weights"] == 14
    assert main(["inspect", str(out)]) == 0
    assert "preset transformer, map sqrt" in capsys.readouterr().out
    assert main(["refine", str(model_dir), "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"svs refine: error: {out} exists; pass --force to replace it"


def test_cli_ctrl_c_leaves_nothing(tmp_path):
    import signal
    import subprocess
    import time

    src = write_hf_dir(tmp_path / "m", llama_state_dict(layers=40, hidden=192, intermediate=576, kv=192), max_shard_bytes=4 << 20)
    proc = subprocess.Popen([sys.executable, "-m", "svs.cli", "refine", str(src), "-o", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".out.") for p in tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == "svs refine: interrupted; nothing was written"
    assert leftovers(tmp_path) == ["m"]


# ---- hostile inputs, full disks and colliding runs (the README's promises, class by class) -------
def run_cli(*argv):
    """``svs`` in this process: (exit status, stderr lines)."""
    import contextlib
    import io as stdio

    from svs.cli import main

    err = stdio.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdio.StringIO()):
        code = main([str(a) for a in argv])
    return code, err.getvalue().strip().splitlines()


@pytest.fixture
def no_refining(monkeypatch):
    """Fails the test if any refining starts: malformed input must be found before it."""
    def refine(*args, **kwargs):
        raise AssertionError("refining started before the input was checked")
    monkeypatch.setattr(refinement, "refine_batch", refine)


def index_with(root: Path, change) -> None:
    path = root / "model.safetensors.index.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


BAD_INDEXES = {
    "a number where a file name belongs": (lambda d: d["weight_map"].update({"model.norm.weight": 3}), "weight_map['model.norm.weight'] is 3"),
    "a list where a file name belongs": (lambda d: d["weight_map"].update({"model.norm.weight": ["a"]}), "weight_map['model.norm.weight'] is ['a']"),
    "a path where a file name belongs": (lambda d: d["weight_map"].update({"model.norm.weight": "../x.safetensors"}), "not a file name"),
    "weight_map a list": (lambda d: d.update(weight_map=list(d["weight_map"])), "a weight_map object"),
    "weight_map missing": (lambda d: d.pop("weight_map"), "a weight_map object"),
    "metadata a list": (lambda d: d.update(metadata=[1]), "'metadata' is a JSON array, not an object"),
    "metadata a string": (lambda d: d.update(metadata="x"), "'metadata' is a JSON string, not an object"),
    "metadata null": (lambda d: d.update(metadata=None), "'metadata' is a JSON null, not an object"),
}


@pytest.mark.parametrize("case", list(BAD_INDEXES))
def test_malformed_index_is_one_line_before_any_refining(case, copy_dir, tmp_path, no_refining):
    """Promise: a corrupt checkpoint is one line on stderr naming the file and key, exit 2, found
    before any work, and a failed run leaves no OUT_DIR."""
    change, message = BAD_INDEXES[case]
    index_with(copy_dir, change)
    code, err = run_cli("refine", copy_dir, "-o", tmp_path / "out", "--report", tmp_path / "r.json")
    assert code == 2 and len(err) == 1 and "model.safetensors.index.json" in err[0] and message in err[0], err
    assert leftovers(tmp_path) == ["m"]


def test_index_not_an_object_or_not_utf8(copy_dir, tmp_path, no_refining):
    """Promise: one line naming the index, exit 2, nothing written."""
    index = copy_dir / "model.safetensors.index.json"
    for data in (b"[1, 2]", b'{"weight_map": {"\xff": 1}}'):
        index.write_bytes(data)
        code, err = run_cli("refine", copy_dir, "-o", tmp_path / "out")
        assert code == 2 and len(err) == 1 and f"{index} is not a safetensors index" in err[0], err
        assert leftovers(tmp_path) == ["m"]


def rewrite_header(shard: Path, change) -> None:
    """``shard`` with its JSON header changed by ``change`` (the data bytes kept)."""
    data = shard.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    change(header)
    head = json.dumps(header).encode()
    shard.write_bytes(len(head).to_bytes(8, "little") + head + data[8 + n:])


def last_entry(header):
    return max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def first_entry(header):
    return min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


BAD_SHARDS = {
    "unknown dtype on a tensor no preset refines": lambda h: h["model.embed_tokens.weight"].update(dtype="Q4") if "model.embed_tokens.weight" in h else h[first_entry(h)].update(dtype="Q4"),
    "overlapping data_offsets": lambda h: h[last_entry(h)].update(data_offsets=[o - 4 for o in h[last_entry(h)]["data_offsets"]]),
    "negative dimension": lambda h: h[first_entry(h)].update(shape=[-1] + h[first_entry(h)]["shape"][1:]),
    "shape and offsets disagree": lambda h: h[first_entry(h)].update(shape=h[first_entry(h)]["shape"] + [2]),
    "__metadata__ not strings": lambda h: h.update(__metadata__={"format": 1}),
}


@pytest.mark.parametrize("case", list(BAD_SHARDS))
def test_malformed_shard_header_is_one_line_before_any_refining(case, copy_dir, tmp_path, no_refining):
    """Promise: "A missing or truncated shard, a file that is not safetensors ... is one line naming
    the file and tensor", exit 2, found before any refining, no OUT_DIR left."""
    shard = sorted(copy_dir.glob("model-*.safetensors"))[-1]
    rewrite_header(shard, BAD_SHARDS[case])
    code, err = run_cli("refine", copy_dir, "-o", tmp_path / "out", "--preset", "transformer")
    assert code == 2 and len(err) == 1 and str(shard) in err[0], err
    assert leftovers(tmp_path) == ["m"]


def test_bytes_no_tensor_covers_are_refused(copy_dir, tmp_path, no_refining):
    """Promise: a file that is not safetensors (data the header does not describe) is one line."""
    shard = first_shard(copy_dir)
    shard.write_bytes(shard.read_bytes() + bytes(64))
    code, err = run_cli("refine", copy_dir, "-o", tmp_path / "out")
    assert code == 2 and len(err) == 1 and f"{shard}: its last 64 bytes belong to no tensor" in err[0], err
    assert leftovers(tmp_path) == ["m"]


def test_shard_truncated_while_the_run_reads_it(copy_dir, tmp_path, monkeypatch):
    """Promise: a truncated shard is one line naming it, exit 2, and a failed run leaves no OUT_DIR,
    also when it is cut short after the check (no SIGBUS, no traceback)."""
    real = refinement.refine_batch

    def truncate_then_refine(*args, **kwargs):
        for shard in copy_dir.glob("model-*.safetensors"):
            with open(shard, "r+b") as f:
                f.truncate(200)
        return real(*args, **kwargs)

    monkeypatch.setattr(refinement, "refine_batch", truncate_then_refine)
    code, err = run_cli("refine", copy_dir, "-o", tmp_path / "out")
    assert code == 2 and len(err) == 1 and "changed while it was read" in err[0] and "model-0000" in err[0], err
    assert leftovers(tmp_path) == ["m"]


@pytest.mark.parametrize("kind", ["symlink to /dev/zero", "fifo", "symlink to a folder", "dangling symlink", "too large"])
def test_other_files_must_be_bounded_regular_files(kind, copy_dir, tmp_path, monkeypatch, no_refining):
    """Promise: every other file is copied, and an unusable one is refused by name, up front, with
    nothing written (a symlink to /dev/zero would otherwise fill the disk)."""
    item = copy_dir / "extra.bin"
    if kind == "symlink to /dev/zero":
        item.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(item)
    elif kind == "symlink to a folder":
        item.symlink_to(tmp_path)
    elif kind == "dangling symlink":
        item.symlink_to(tmp_path / "nothing")
    else:
        monkeypatch.setattr(sharded, "MAX_OTHER_FILE_BYTES", 1000)
        item.write_bytes(bytes(1001))
    code, err = run_cli("refine", copy_dir, "-o", tmp_path / "out")
    assert code == 2 and len(err) == 1 and str(item) in err[0], err
    assert leftovers(tmp_path) == ["m"]


def test_other_files_in_subfolders_and_symlinked_files_are_copied(copy_dir, tmp_path):
    """Promise: "every other file copied" (a Hugging Face cache links its files into blobs)."""
    (copy_dir / "sub").mkdir()
    (copy_dir / "sub" / "notes.txt").write_text("n")
    (tmp_path / "blob").write_text("b")
    (copy_dir / "linked.json").symlink_to(tmp_path / "blob")
    sharded.refine_dir(copy_dir, tmp_path / "out")
    assert (tmp_path / "out" / "sub" / "notes.txt").read_text() == "n"
    assert (tmp_path / "out" / "linked.json").read_text() == "b" and not (tmp_path / "out" / "linked.json").is_symlink()


# ---- output errors: full disk, read-only, quota -------------------------------------------------
def test_output_errors_on_a_directory_are_one_line(copy_dir, tmp_path, monkeypatch):
    """Promise: an unwritable output (full disk, quota) is one line, exit 2, and a failed run leaves
    no OUT_DIR and no temporary."""
    import errno

    for code_ in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        def fail(src, dst, *args):
            raise OSError(code_, os.strerror(code_), str(dst))  # a file in the temporary folder
        monkeypatch.setattr(sharded, "_copy_except", fail)
        code, err = run_cli("refine", copy_dir, "-o", tmp_path / "out", "--report", tmp_path / "r.json")
        assert code == 2 and len(err) == 1 and f"{tmp_path / 'out'}: cannot write it ({os.strerror(code_)})" in err[0], err
        assert leftovers(tmp_path) == ["m"]


def test_full_disk_on_a_directory_output(copy_dir, tmp_path):
    """Promise: a full disk is one line, exit 2, nothing left (a subprocess whose files may not grow
    past 4 kB: writes fail with EFBIG as on a full disk, without root)."""
    import resource
    import signal
    import subprocess

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4_000, 4_000))

    proc = subprocess.run([sys.executable, "-m", "svs.cli", "refine", str(copy_dir), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, preexec_fn=limit, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "File too large" in proc.stderr
    assert leftovers(tmp_path) == ["m"]


# ---- outputs never collide ----------------------------------------------------------------------
def test_second_run_on_an_output_being_written_fails(model_dir, tmp_path):
    """Promise: an existing output is replaced only with --force; a run writing it holds it, so a
    second run fails with one line instead of replacing it (with or without --force)."""
    from svs.io import claim

    out = tmp_path / "out"
    with claim(out):
        for force in ([], ["--force"]):
            code, err = run_cli("refine", model_dir, "-o", out, *force)
            assert code == 2 and len(err) == 1 and "is being written by process" in err[0], err
    assert leftovers(tmp_path) == []


def test_output_that_appears_while_running_is_not_replaced(model_dir, tmp_path, monkeypatch):
    """Promise: "an existing one is replaced only with --force", also when it appears meanwhile
    (another run finished first): one line, exit 2, the other output intact, nothing of ours left."""
    real = refinement.refine_batch
    out = tmp_path / "out"

    for contents in ({"theirs.txt": "x"}, {}):
        def other_run_finishes(*args, **kwargs):
            out.mkdir(exist_ok=True)
            for name, text in contents.items():
                (out / name).write_text(text)
            return real(*args, **kwargs)

        monkeypatch.setattr(refinement, "refine_batch", other_run_finishes)
        code, err = run_cli("refine", model_dir, "-o", out)
        assert code == 2 and len(err) == 1 and "appeared while svs was writing it" in err[0], err
        assert sorted(p.name for p in out.iterdir()) == sorted(contents) and leftovers(tmp_path) == ["out"]
        out.rmdir() if not contents else [p.unlink() for p in out.iterdir()] and out.rmdir()


def test_killed_runs_temporaries_are_removed_by_the_next_run(model_dir, tmp_path):
    """Promise: a failed or interrupted run leaves no OUT_DIR: a SIGKILLed run cannot clean up, so
    the next run on the same output recognises its temporaries (their name and the dead process's
    lock) and removes them, and only them."""
    import signal
    import subprocess

    out = tmp_path / "out"
    code = ("import sys, time; from pathlib import Path; from svs.io import claim, temp_path\n"
            "out = Path(sys.argv[1])\n"
            "with claim(out):\n"
            "    temp_path(out).mkdir(); temp_path(out, 'old').mkdir(); print('ready', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    (tmp_path / ".out.someone-elses").mkdir()
    (tmp_path / ".other.svs-tmp-0123abcd").mkdir()
    code_, err = run_cli("refine", model_dir, "-o", out)
    assert code_ == 2 and "is being written by process" in err[0], err
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_cli("refine", model_dir, "-o", out)[0] == 0
    assert leftovers(tmp_path) == [".other.svs-tmp-0123abcd", ".out.someone-elses", "out"]


def test_report_may_not_point_into_the_input_or_at_the_output(copy_dir, tmp_path, no_refining):
    """Promise: svs "never overwrites its input": --report inside MODEL_DIR (even with --force) or at
    or inside OUT_DIR is one line before any work, and nothing changes."""
    before = {p: p.read_bytes() for p in copy_dir.iterdir()}
    out = tmp_path / "out"
    for report in (copy_dir / "model.safetensors.index.json", copy_dir / "new.json", out, out / "r.json"):
        code, err = run_cli("refine", copy_dir, "-o", out, "--report", report, "--force")
        assert code == 2 and len(err) == 1 and "--report" in err[0], err
    assert {p: p.read_bytes() for p in copy_dir.iterdir()} == before and leftovers(tmp_path) == ["m"]


def test_dangling_symlink_output_is_refused_before_any_work(model_dir, tmp_path, no_refining):
    """Promise: outputs are checked before the work starts; a symlink to nothing is one line."""
    (tmp_path / "out").symlink_to(tmp_path / "nowhere" / "x")
    code, err = run_cli("refine", model_dir, "-o", tmp_path / "out")
    assert code == 2 and len(err) == 1 and "is a symlink to" in err[0], err
    assert leftovers(tmp_path) == ["out"]


def test_force_onto_a_symlink_to_a_folder_leaves_nothing_behind(model_dir, tmp_path):
    """Promise: an existing OUT_DIR is replaced with --force and nothing else is left; a symlinked
    OUT_DIR keeps its link, which names the new output."""
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "old.txt").write_text("old")
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "out").symlink_to(tmp_path / "real")
    assert run_cli("refine", model_dir, "-o", tmp_path / "links" / "out", "--force")[0] == 0
    assert leftovers(tmp_path) == ["links", "real"] and leftovers(tmp_path / "links") == ["out"]
    assert (tmp_path / "links" / "out").is_symlink() and (tmp_path / "real" / sharded.RECORD).is_file()
    assert not (tmp_path / "real" / "old.txt").exists()


def test_really_full_or_read_only_disk_for_a_directory(model_dir, tmp_path):
    """Promise: a full (ENOSPC) or read-only output file system is one line, exit 2, and no OUT_DIR,
    report or temporary is left (a 64 kB tmpfs; needs root and mount rights, else skipped)."""
    import subprocess

    mnt = tmp_path / "fs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mnt / "filler").write_bytes(bytes(40_000))
        for remount, message in (("rw", "No space left on device"), ("ro", f"folder {mnt} is not writable")):
            subprocess.run(["mount", "-o", f"remount,{remount}", str(mnt)], check=True)
            code, err = run_cli("refine", model_dir, "-o", mnt / "out", "--report", mnt / "r.json")
            assert code == 2 and len(err) == 1 and message in err[0], err
            assert leftovers(mnt) == ["filler"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_shard_that_is_not_a_regular_file(copy_dir, tmp_path, no_refining):
    """Promise: a shard that is not safetensors is one line naming it, before any work (a symlink to
    /dev/zero would otherwise be read forever)."""
    shard = first_shard(copy_dir)
    shard.unlink()
    shard.symlink_to("/dev/zero")
    code, err = run_cli("refine", copy_dir, "-o", tmp_path / "out")
    assert code == 2 and len(err) == 1 and f"{shard} is not a regular file" in err[0], err
    assert leftovers(tmp_path) == ["m"]
