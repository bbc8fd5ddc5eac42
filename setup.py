"""Builds the extension svs_kernels._C (the svs:: operators) and sets the package's dependencies
(below); everything else about the package (metadata, extras, packages) is in pyproject.toml.

The CUDA kernels are built when the installed torch is a CUDA build and a CUDA toolkit is found
(`torch.version.cuda` and `CUDA_HOME`); otherwise only the CPU kernel is built. Checking
`torch.cuda.is_available()` instead would wrongly skip CUDA on a GPU build host without a GPU.
Build with `pip install --no-build-isolation -e .` so the installed torch is used.

The package's dependencies are set here, not in pyproject.toml, because the torch requirement
depends on the build: `_C` links against the C++ ABI of the torch it was compiled with and does not
load with another version, so the metadata pins `torch==<that version>`. The local label (`+cpu`,
`+cu130`) is dropped: PEP 440 lets `==2.13.0` match `2.13.0+cpu` and `2.13.0+cu130` (so
the torch the build used always satisfies it), whereas `==2.13.0+cpu` would match only that one
build and make pip fail wherever the index has no such label (PyPI has none). The CUDA and CPU
builds of one torch version share the C++ ABI the extension uses; a CUDA `_C` also needs a
CUDA torch.
"""
import glob
import os

from setuptools import setup
from torch.utils import cpp_extension

CPU_SOURCES = sorted(glob.glob("csrc/*.cpp"))
CUDA_SOURCES = sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
# sm_90 machine code for H100/H200, plus PTX so newer GPUs can JIT-compile it.
NVCC_FLAGS = ["-O3", "-gencode=arch=compute_90,code=sm_90", "-gencode=arch=compute_90,code=compute_90"]


def requirements():
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", "numpy", "safetensors", "tqdm"]


def build_cuda() -> bool:
    if os.environ.get("SVS_FORCE_CPU") == "1":
        return False
    import torch

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and bool(CUDA_SOURCES)


def extension():
    common = dict(include_dirs=[os.path.abspath("csrc")], extra_compile_args={"cxx": ["-O3"]})
    if build_cuda():
        common["extra_compile_args"]["nvcc"] = NVCC_FLAGS
        common["extra_compile_args"]["cxx"].append("-DSVS_WITH_CUDA")
        return cpp_extension.CUDAExtension(
            "svs_kernels._C", CPU_SOURCES + CUDA_SOURCES, libraries=["cusolver", "cublas"], **common
        )
    return cpp_extension.CppExtension("svs_kernels._C", CPU_SOURCES, **common)


setup(ext_modules=[extension()], install_requires=requirements(), cmdclass={"build_ext": cpp_extension.BuildExtension})
