"""The kernels of svs-kernels as Python sees them.

Importing this package loads the compiled extension, which registers the ``torch.ops.svs``
operators (``refine`` and the in-place ``refine_``), and registers their fake kernels so the
operators trace under ``torch.compile`` and ``torch.export``.
"""
import glob as _glob
import os as _os
import sys as _sys

import torch  # noqa: F401  (loads libc10/libtorch, which _C links against)

# The CUDA build of _C needs libcusolver and libcublas (DT_NEEDED by soname, no RPATH). The loader
# takes a library already loaded under that soname before searching LD_LIBRARY_PATH and the system,
# so loading torch's copies first makes _C use them, never another toolkit's with the same soname.
_CUDA_LIBRARIES = (("cublas", "libcublasLt.so.*[0-9]"), ("cublas", "libcublas.so.*[0-9]"),
                   ("cusolver", "libcusolver.so.*[0-9]"))


def _preload_cuda_libraries() -> None:
    """Loads libcublasLt, libcublas and libcusolver from torch's nvidia-* wheels, as torch finds its
    own (nvidia/cu<major>/lib or nvidia/<name>/lib on sys.path, torch's site-packages first), unless
    a copy is loaded already (torch preloads them when it loads libcudart; a torch built against a
    system toolkit loads that one, and that is the one to share). Linux only; never raises."""
    if torch.version.cuda is None or not _sys.platform.startswith("linux"):
        return
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
        major = torch.version.cuda.split(".")[0]
        roots = [_os.path.dirname(_os.path.dirname(torch.__file__))] + _sys.path
        for folder, pattern in _CUDA_LIBRARIES:
            if "/" + pattern.split("*")[0] in maps:
                continue
            for root in roots:
                hits = sorted(_glob.glob(_os.path.join(root, "nvidia", f"cu{major}", "lib", pattern))
                              + _glob.glob(_os.path.join(root, "nvidia", folder, "lib", pattern)))
                if hits:
                    import ctypes

                    ctypes.CDLL(hits[0])
                    break
    except OSError:
        pass  # then the loader's own search decides, and `import _C` says what is missing


_preload_cuda_libraries()

from . import _C  # noqa: F401,E402  (registers torch.ops.svs.*)
from . import fake  # noqa: F401,E402  (registers the fake kernels)
from . import triton_ops as _triton_ops  # noqa: F401,E402  (Triton CUDA kernel of svs::_reconstruct if triton and CUDA are there; never raises)

__all__ = ["backend_info", "has_cuda_kernel"]


def backend_info() -> dict:
    """Which kernels svs.refine runs here: ``refine_cuda`` (this build has the CUDA kernel of
    svs::refine), ``reconstruct`` ("triton": the grouped Triton kernel is the CUDA kernel of
    svs::_reconstruct; "composite": the per-matrix ATen fallback, which warns once when it runs
    on CUDA), ``triton`` (its version, or None) and ``note`` (why)."""
    import sys

    triton = getattr(sys.modules.get("triton"), "__version__", None)
    return {"refine_cuda": has_cuda_kernel(),
            "reconstruct": "triton" if _triton_ops.registered() else "composite",
            "triton": triton, "note": _triton_ops.registration_note()}


def has_cuda_kernel() -> bool:
    """Whether this build of the extension has the CUDA kernel of ``svs::refine``."""
    import torch

    return torch._C._dispatch_has_kernel_for_dispatch_key("svs::refine", "CUDA")
