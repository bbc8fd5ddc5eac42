"""Compile coverage of the Triton kernels for sm_90 (H100) without a GPU: every kernel x config x
dtype x precision svs_kernels.triton_ops can launch compiles with the pinned triton, without
register spills, and its GEMMs use tensor cores (TF32 or DMMA) (benchmarks/triton_compile_coverage.py; the
same script checks triton 3.6, the GPU machine's, from .venv-cu130)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _has_cuda_backend() -> bool:
    try:
        import triton.backends

        return "nvidia" in triton.backends.backends
    except Exception:
        return False


@pytest.mark.skipif(not _has_cuda_backend(), reason="triton or its NVIDIA backend is not available")
def test_every_launchable_kernel_compiles_for_sm90_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # really compile, in a throwaway cache
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "triton_compile_coverage.py")], env=env,
                       capture_output=True, text=True, timeout=1200)
    tail = (r.stdout + r.stderr)[-6000:]
    assert r.returncode == 0 and "\nok " in r.stdout, tail
    # the launcher's kinds all appear: a new kind without a compile case would not be covered
    for kind in ("gemm float32 out=fp32 tf32 x3", "gemm float32 out=bf16 tf32 x1", "gemm float64 out=fp64 ieee x1",
                 "stage fp32->fp32 mode=2", "sigma_map"):
        assert kind in r.stdout, f"no compile case for {kind!r}"
