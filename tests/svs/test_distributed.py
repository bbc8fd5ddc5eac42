"""SVS over a process group: 2 gloo processes (torchrun, 127.0.0.1) against one process, bit for bit
(the split itself: test_planner.py)."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import svs  # noqa: E402
from svs import sharded  # noqa: E402
from svs.testing import llama_state_dict, write_hf_dir  # noqa: E402


def torchrun(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """tests/svs/dist_worker.py on 2 ranks, on a free port of 127.0.0.1 (tried again should another
    process take the port between our probe and torchrun's bind)."""
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(port), str(ROOT / "tests" / "svs" / "dist_worker.py"), *args]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if "address already in use" not in run.stderr.lower():
            return run
    return run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_hf_dir(tmp_path_factory.mktemp("d") / "m", llama_state_dict(layers=2, seed=3), max_shard_bytes=10_000)


def test_two_gloo_processes_equal_one_process(model_dir, tmp_path):
    out1, out2, result = tmp_path / "one", tmp_path / "two", tmp_path / "api.safetensors"
    run = torchrun("ok", str(model_dir), str(out2), str(result))
    assert run.returncode == 0, run.stderr[-3000:]
    sharded.refine_dir(model_dir, out1, preset="generic")
    shards = sorted(p.name for p in model_dir.glob("*.safetensors"))
    assert len(shards) > 2
    for shard in shards:
        assert (out2 / shard).read_bytes() == (out1 / shard).read_bytes(), shard
    state = {}
    for shard in shards:
        state.update(load_file(str(model_dir / shard)))
    expected, _ = svs.refine_state_dict(state, preset="generic")
    got = load_file(str(result))
    assert all(torch.equal(got[n], expected[n]) for n in state)
    assert sharded.read_record(out2).totals() == {**sharded.read_record(out1).totals(),
                                                  "seconds": sharded.read_record(out2).totals()["seconds"]}


def test_failing_rank_makes_every_rank_raise(tmp_path):
    state = llama_state_dict(layers=2, seed=4)
    bad = "model.layers.1.mlp.down_proj.weight"
    state[bad][0, 0] = float("nan")
    src = write_hf_dir(tmp_path / "m", state, max_shard_bytes=10_000)
    run = torchrun("nan", str(src), str(tmp_path / "out"), str(tmp_path / "err"))
    assert run.returncode == 0, run.stderr[-3000:]
    for rank in (0, 1):
        assert (tmp_path / f"err.rank{rank}").exists(), run.stderr[-3000:]
        message = (tmp_path / f"err.rank{rank}").read_text()
        assert message.startswith("RefineError: rank ") and bad in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["err.rank0", "err.rank1", "m"]
