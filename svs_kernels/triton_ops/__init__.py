"""Triton kernels of svs-kernels (sigma-map, staging, grouped GEMM), optional.

Importing this package never fails and never imports triton unless CUDA is available: then, if
triton imports, it registers :func:`reconstruct.reconstruct` as the CUDA kernel of the internal
operator ``svs::_reconstruct`` (the C++ CUDA path of ``svs::refine`` calls it through the
dispatcher with the map already parsed: a code and a power). Without triton or CUDA the operator
keeps its ATen composite kernel, which warns once when it runs on CUDA tensors.
:func:`svs_kernels.backend_info` says which one is active and why.

One module per kernel plus its launcher: ``sigma_map``, ``stage``, ``gemm``; ``reconstruct``
chains them (the bias rule has no Triton kernel: the CUDA build of svs::refine has its own).
``_maps`` and ``_layout`` read the map codes and the launch-table layout from the extension. On a
CPU-only machine the kernels run under the Triton interpreter on CPU tensors: set
``TRITON_INTERPRET=1`` before triton is first imported.
"""
from typing import Optional

from ._maps import parse_map  # noqa: F401  (no triton import: the extension parses)

__all__ = ["available", "import_error", "parse_map", "registered", "registration_note"]

_IMPORT_ERROR: Optional[BaseException] = None
_REGISTERED = False
_NOTE = "not registered yet"
_LIBS = []


def available() -> bool:
    """Whether triton imports (importing it if that has not happened yet)."""
    global _IMPORT_ERROR
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as e:  # ImportError, or a broken install (e.g. an incompatible numpy)
        _IMPORT_ERROR = e
        return False
    return True


def import_error() -> Optional[BaseException]:
    """Why triton did not import, if it did not."""
    return _IMPORT_ERROR


def registered() -> bool:
    """Whether the Triton kernel is registered as the CUDA kernel of svs::_reconstruct."""
    return _REGISTERED


def registration_note() -> str:
    """Why the Triton kernel is or is not the CUDA kernel of svs::_reconstruct."""
    return _NOTE


def _op_impl(u, s, vh, out, map=0, power=1.0):
    from . import reconstruct

    reconstruct.reconstruct(u, s, vh, out, map, power)


def register(dispatch_key: str = "CUDA"):
    """Register the Triton reconstruction as the ``dispatch_key`` kernel of ``svs::_reconstruct``.

    Returns the Library holding the registration (kept alive here; ``lib._destroy()`` undoes it,
    which tests use with dispatch_key="CPU" under the interpreter).
    """
    import torch

    lib = torch.library.Library("svs", "IMPL")
    lib.impl("_reconstruct", _op_impl, dispatch_key)
    _LIBS.append(lib)
    return lib


def _register_cuda() -> bool:
    global _REGISTERED, _IMPORT_ERROR, _NOTE
    import os

    import torch

    if not torch.cuda.is_available():
        _NOTE = "not registered: CUDA is not available"
        return False
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        _NOTE = "not registered: TRITON_INTERPRET is set (the interpreter cannot run on CUDA tensors)"
        return False
    if torch._C._dispatch_has_kernel_for_dispatch_key("svs::_reconstruct", "CUDA"):
        _NOTE = "not registered: svs::_reconstruct already has a CUDA kernel (one kernel per dispatch key)"
        return False
    if not available():
        _NOTE = f"not registered: triton does not import ({_IMPORT_ERROR!r})"
        return False
    try:
        from . import reconstruct  # noqa: F401  (compiles nothing; fails early on an API mismatch)

        register("CUDA")
    except Exception as e:
        _IMPORT_ERROR = e
        _NOTE = f"not registered: {e!r}"
        return False
    _REGISTERED = True
    _NOTE = "registered: svs_kernels.triton_ops.reconstruct is the CUDA kernel of svs::_reconstruct"
    return True


_register_cuda()
