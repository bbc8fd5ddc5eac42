"""The kernels of svs-kernels as Python sees them.

Importing this package loads the compiled extension, which registers the ``torch.ops.svs``
operators (``refine`` and the in-place ``refine_``), and registers their fake kernels so the
operators trace under ``torch.compile`` and ``torch.export``.
"""
import torch  # noqa: F401  (loads libc10/libtorch, which _C links against)

from . import _C  # noqa: F401  (registers torch.ops.svs.*)
from . import fake  # noqa: F401  (registers the fake kernels)
from . import triton as _triton  # noqa: F401  (Triton CUDA kernel of svs::_reconstruct if triton and CUDA are there; never raises)

__all__ = ["has_cuda_kernel"]


def has_cuda_kernel() -> bool:
    """Whether this build of the extension has the CUDA kernel of ``svs::refine``."""
    import torch

    return torch._C._dispatch_has_kernel_for_dispatch_key("svs::refine", "CUDA")
