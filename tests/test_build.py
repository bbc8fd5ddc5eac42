"""The CMake build and the built-in demo, as a new user runs them."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CMAKE_LIB = Path(os.environ.get("SVS_CMAKE_LIB", ROOT / "cmake-build" / "libsvs_ops.so"))


@pytest.mark.skipif(not CMAKE_LIB.exists(), reason=f"CMake library not built ({CMAKE_LIB}); .ci/run builds it")
def test_cmake_library_loads_and_refines():
    # A fresh interpreter: the library registers the same svs namespace as svs_kernels._C.
    code = (
        "import torch; torch.ops.load_library(r'%s');"
        "w = torch.randn(6, 4, dtype=torch.float64);"
        "(o,), _ = torch.ops.svs.refine([w], [None]);"
        "u, s, vh = torch.linalg.svd(w, full_matrices=False);"
        "assert torch.allclose(o, (u * s.sqrt()) @ vh, rtol=0, atol=1e-12), 'mismatch'; print('ok')" % CMAKE_LIB
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_demo_runs(tmp_path):
    """The README's main job, on a tiny budget: bundled teacher, prune, with/without SVS, fine-tune."""
    pytest.importorskip("diffusers")
    pytest.importorskip("torch_pruning")
    pytest.importorskip("sklearn")
    result = subprocess.run([sys.executable, "-m", "svs.cli", "demo", "--out", str(tmp_path), "--steps", "4",
                             "--eval-samples", "16"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "FID pruned" in result.stdout and "refined" in result.stdout
    for name in ("fid.png", "spectrum.png", "demo.json"):
        assert (tmp_path / name).exists(), name
