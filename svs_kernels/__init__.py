"""The kernels of svs-kernels as Python sees them.

Importing this package loads the compiled extension, which registers the ``torch.ops.svs``
operators (``refine`` and the in-place ``refine_``), and registers their fake kernels so the
operators trace under ``torch.compile`` and ``torch.export``.
"""
import torch  # noqa: F401  (loads libc10/libtorch, which _C links against)

from . import _C  # noqa: F401  (registers torch.ops.svs.*)
from . import fake  # noqa: F401  (registers the fake kernels)
from . import triton_ops as _triton_ops  # noqa: F401  (Triton CUDA kernel of svs::_reconstruct if triton and CUDA are there; never raises)

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
