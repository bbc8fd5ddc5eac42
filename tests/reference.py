"""What several test modules share: the float64 references every accuracy test compares against
(written from the definition of SVS, independently of the kernels), the comparison with its stated
tolerance per dtype, a pickle that proves whether code from a file ran, and whether Triton's
interpreter can run here."""
import functools

import numpy as np
import torch


def reference_refine(w: torch.Tensor, map: str = "sqrt") -> np.ndarray:
    """float64 numpy SVS of one weight, flattened to (shape[0], -1): the definition, written
    independently of the kernels. Singular values <= max(m, n) * eps64 * s_max count as zero."""
    m = w.detach().cpu().to(torch.float64).reshape(w.shape[0], -1).numpy()
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    keep = s > max(m.shape) * np.finfo(np.float64).eps * s[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        if map == "sqrt":
            f = np.sqrt(s)
        elif map == "log1p":
            f = np.log1p(s)
        elif map == "abslog":
            f = np.abs(np.log(s))
        elif map.startswith("power:"):
            f = s ** float(map.split(":", 1)[1])
        elif map == "ones":
            f = np.ones_like(s)
        elif map == "spectral":
            f = s / s[0]
        elif map == "square":
            f = s * s
        elif map == "identity":
            f = s.copy()
        else:
            raise ValueError(map)
    f = np.where(keep, f, 0.0)
    return ((u * f) @ vt).reshape(tuple(w.shape))


def reference_bias(b: torch.Tensor, eps: float = 1e-8) -> np.ndarray:
    x = b.detach().cpu().to(torch.float64).numpy()
    return x / np.sqrt(np.linalg.norm(x) + eps)


def rel_err(actual: torch.Tensor, expected: np.ndarray) -> float:
    """||actual - expected||_F / max(||expected||_F, 1e-6). The floor makes a map output that is
    zero in exact arithmetic (abslog of s = 1, a zero matrix) compare absolutely instead of
    dividing rounding noise by rounding noise."""
    a = actual.detach().cpu().to(torch.float64).numpy()
    return float(np.linalg.norm(a - expected) / max(np.linalg.norm(expected), 1e-6))


# Relative Frobenius tolerance per output dtype; see tests/csrc/test_refine_op.py for the derivation.
TOL = {torch.float64: 1e-8, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def assert_matches(actual: torch.Tensor, expected: np.ndarray, tol: float = None) -> None:
    """||actual - expected|| <= tol * max(||expected||, 1e-6) + sqrt(numel) * subnormal spacing.
    The last term is the absolute rounding of outputs below the dtype's smallest normal number
    (float16: 2^-24 ~ 6e-8), where relative precision is lost by the format itself."""
    tol = TOL[actual.dtype] if tol is None else tol
    info = torch.finfo(actual.dtype)
    a = actual.detach().cpu().to(torch.float64).numpy()
    err = np.linalg.norm(a - expected)
    bound = tol * max(np.linalg.norm(expected), 1e-6) + np.sqrt(a.size) * info.smallest_normal * info.eps
    assert err <= bound, f"error {err:.3g} > bound {bound:.3g} (relative {rel_err(actual, expected):.3g}, tol {tol:g})"


class Payload:
    """Unpickling it calls open(marker, "w"): proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@functools.lru_cache(maxsize=None)
def triton_interpreter_problem():
    """Why Triton's interpreter cannot run these kernels here, or None. Triton 3.6's interpreter
    turns a loaded scalar into a Python int with int(ndarray), which numpy >= 2.3 refuses for arrays
    of one element ("only 0-dimensional arrays can be converted to Python scalars"): the GPU image
    (triton 3.6.0, numpy 2.5.2) and its CI mirror hit it; there the kernels run compiled on a GPU
    instead, and the main CI environment (triton 3.9, numpy 2.4) runs them interpreted. Probed by
    running the construct, not by comparing versions."""
    import triton
    import triton.language as tl

    @triton.jit
    def probe(n_ptr, out_ptr):
        total = 0
        for i in range(tl.load(n_ptr)):  # a loaded scalar as a loop bound: __index__
            total += i
        tl.store(out_ptr, total)

    n, out = torch.tensor([3], dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    try:
        probe[(1,)](n, out)
    except Exception as e:  # noqa: BLE001 - the interpreter's failure is the answer
        import numpy

        return (f"Triton {triton.__version__}'s interpreter fails with numpy {numpy.__version__} "
                f"({type(e).__name__}: {e}); these kernels run compiled on a GPU, and interpreted in "
                "the main CI environment")
    return None if out.item() == 3 else f"Triton's interpreter computed {out.item()} for 0 + 1 + 2"
