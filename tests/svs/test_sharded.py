"""Sharded Hugging Face style checkpoint directories: streamed refinement, the output layout, and
one test per bad input. Checkpoints are a few hundred kB, generated with fixed seeds."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import svs  # noqa: E402
from benchmarks.checkpoints import llama_state_dict, write_hf_dir  # noqa: E402
from svs import sharded  # noqa: E402
from svs.io import CheckpointError  # noqa: E402

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
    real = sharded.refine_tensors

    def second_call_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise failure("parameter 'x' failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(sharded, "refine_tensors", second_call_fails)
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
