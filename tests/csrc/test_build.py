"""The builds: the CMake library, and the CUDA build's runtime libraries and symbol check."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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


# The CUDA build links libcusolver and libcublas by soname; svs_kernels loads torch's copies (the
# nvidia-* wheels) before _C, so a system toolkit with the same sonames is never used (issue 10).
_MAPS_CODE = r"""
import glob, json, os, re, torch, svs_kernels
site = os.path.dirname(os.path.dirname(torch.__file__))
wheel_dirs = sorted({os.path.realpath(os.path.dirname(p)) for p in
                     glob.glob(os.path.join(site, "nvidia", "*", "lib", "libcusolver.so.*"))
                     + glob.glob(os.path.join(site, "nvidia", "*", "lib", "libcublas.so.*"))})
maps = set(re.findall(r"(/\S+\.so[\d.]*)\s*$", open("/proc/self/maps").read(), re.M))
print(json.dumps({"cuda_kernel": svs_kernels.has_cuda_kernel(), "wheel_dirs": wheel_dirs,
                  "mapped": sorted(os.path.realpath(p) for p in maps
                                   if re.match(r"lib(cusolver|cublas)\.so\.", os.path.basename(p)))}))
"""


def test_cuda_libraries_are_torchs():
    import torch

    if torch.version.cuda is None:
        pytest.skip(f"torch {torch.__version__} is not a CUDA build")
    result = subprocess.run([sys.executable, "-c", _MAPS_CODE], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    info = __import__("json").loads(result.stdout)
    if not info["cuda_kernel"]:
        pytest.skip("svs_kernels was built without the CUDA kernel")
    if not info["wheel_dirs"]:
        pytest.skip("torch has no nvidia-* wheel libraries (built against a system CUDA toolkit)")
    names = [os.path.basename(p).split(".so")[0] for p in info["mapped"]]
    assert sorted(names) == ["libcublas", "libcusolver"], f"expected one copy of each: {info['mapped']}"
    for path in info["mapped"]:
        assert os.path.dirname(path) in info["wheel_dirs"], f"{path} is not from torch's wheels {info['wheel_dirs']}"


def test_check_cuda_build_catches_a_private_torch_symbol(tmp_path):
    """.ci/check_cuda_build.py must fail on a library that needs at::cuda::getCurrentCUDASolverDnHandle,
    which only torch's lazily, privately loaded libtorch_cuda_linalg.so defines (the import failure of
    issue 10), and accept at::cuda::getCurrentCUDABlasHandle, which libtorch_cuda.so exports."""
    import torch

    if torch.version.cuda is None:
        pytest.skip(f"torch {torch.__version__} is not a CUDA build")
    src = tmp_path / "needs.c"
    src.write_text("extern void *_ZN2at4cuda28getCurrentCUDASolverDnHandleEv(void);\n"
                   "extern void *_ZN2at4cuda24getCurrentCUDABlasHandleEv(void);\n"
                   "void *f(void) { return _ZN2at4cuda28getCurrentCUDASolverDnHandleEv() ? 0 : "
                   "_ZN2at4cuda24getCurrentCUDABlasHandleEv(); }\n")
    lib = tmp_path / "libneeds.so"
    torch_lib = Path(torch.__file__).parent / "lib"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src), f"-L{torch_lib}", "-Wl,--no-as-needed",
                    "-ltorch_cuda"], check=True)
    result = subprocess.run([sys.executable, str(ROOT / ".ci" / "check_cuda_build.py"), "--lib", str(lib)],
                            capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr
    unresolved = [line for line in result.stdout.splitlines() if line.startswith("FAIL: unresolved symbol")]
    assert len(unresolved) == 1 and "getCurrentCUDASolverDnHandle" in unresolved[0], result.stdout
