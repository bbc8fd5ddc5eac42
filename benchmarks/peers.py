"""The peers: every way of computing SVS that the benchmark times against each other.

Each peer is a function ``fn(weights, biases) -> (new_weights, new_biases)`` on the tensors of one
workload (in its dtype, original shapes, on the benchmark device): each weight W is flattened to
M = (shape[0], -1), replaced by U sqrt(S) V^T and reshaped back; each bias b by
b / sqrt(||b||_2 + 1e-8); outputs in the input's dtype. `peers_for(device)` lists them with the
reason a peer cannot run.

bfloat16 / float16 inputs: neither torch.linalg.svd (CPU) nor numpy has a kernel for them, so the
SVD peers do what PiSSA-style code does: W.float(), a float32 SVD, U sqrt(S) Vh, .to(W.dtype)
(`compute_dtype`); the casts are part of the timed call. svs.refine takes and returns them as they are.

Our routes: one peer per `method=` value of torch.ops.svs.refine on the device, as the build
reports them (torch.ops.svs._method_names, the list each device's kernel checks `method=` against).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .workloads import group_by_shape

Tensors = List[torch.Tensor]
OptTensors = List[Optional[torch.Tensor]]
PeerFn = Callable[[Sequence[torch.Tensor], Sequence[Optional[torch.Tensor]]], Tuple[Tensors, OptTensors]]

BIAS_EPS = 1e-8
BASELINE = "torch.linalg.svd per layer"  # the speedup column is relative to this peer


@dataclasses.dataclass
class Peer:
    name: str
    fn: Optional[PeerFn]
    skip: Optional[str] = None  # why it cannot run here (None: it can)
    note: str = ""
    ours: bool = False


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the SVD peers compute in: float32 for bfloat16 / float16 (no SVD kernel in torch's
    CPU backend or numpy), the input's own dtype for float32 and float64."""
    return torch.promote_types(dtype, torch.float32)


def _scale_bias(b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if b is None:
        return None
    x = b.to(compute_dtype(b.dtype))
    return (x / torch.sqrt(torch.linalg.vector_norm(x) + BIAS_EPS)).to(b.dtype)


# --------------------------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------------------------
def authors_numpy_loop(weights, biases):
    """The authors' loop (their released SVS code, benchmarks/README.md): per parameter, to numpy on the CPU,
    float32 thin SVD, U * sqrt(S) @ Vt, back to a tensor on the parameter's device (and dtype: numpy
    has no bfloat16, so low-precision parameters go through float32, `compute_dtype`)."""
    import numpy as np

    out_w, out_b = [], []
    for w, b in zip(weights, biases):
        a = w.detach().cpu().to(compute_dtype(w.dtype)).numpy()
        u, s, vt = np.linalg.svd(a.reshape(a.shape[0], -1), full_matrices=False)
        out_w.append(torch.from_numpy(((u * np.sqrt(s)) @ vt).reshape(a.shape)).to(w.device, w.dtype))
        if b is None:
            out_b.append(None)
        else:
            bn = b.detach().cpu().to(compute_dtype(b.dtype)).numpy()
            out_b.append(torch.from_numpy(bn / np.sqrt(np.linalg.norm(bn) + BIAS_EPS)).to(b.device, b.dtype))
    return out_w, out_b


def torch_svd_per_layer(weights, biases):
    """torch.linalg.svd per weight, then (U * sqrt(S)) @ Vh (what users and PEFT initialisers do;
    PiSSA: W.float() first and .to(W.dtype) after, for bfloat16 / float16 weights)."""
    out_w = []
    for w in weights:
        a = w.reshape(w.shape[0], -1).to(compute_dtype(w.dtype))
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        out_w.append(((u * s.sqrt().unsqueeze(-2)) @ vh).reshape(w.shape).to(w.dtype))
    return out_w, [_scale_bias(b) for b in biases]


def torch_svd_batched(weights, biases):
    """torch.linalg.svd batched over each group of equal (m, n): stack, one call, unstack (in
    `compute_dtype`, back to each weight's dtype)."""
    out_w: List[Optional[torch.Tensor]] = [None] * len(weights)
    for (m, n), idx in group_by_shape(weights).items():
        a = torch.stack([weights[i].reshape(m, n) for i in idx])
        u, s, vh = torch.linalg.svd(a.to(compute_dtype(a.dtype)), full_matrices=False)
        r = (u * s.sqrt().unsqueeze(-2)) @ vh
        for j, i in enumerate(idx):
            out_w[i] = r[j].reshape(weights[i].shape).to(weights[i].dtype)
    return out_w, [_scale_bias(b) for b in biases]  # type: ignore[return-value]


def cupy_svd_per_layer(weights, biases):
    """cupy.linalg.svd per weight on the GPU (zero-copy through DLPack), (U * sqrt S) @ Vt; in
    `compute_dtype` (CuPy has no bfloat16), back to the weight's dtype."""
    import cupy

    out_w = []
    for w in weights:
        a = cupy.from_dlpack(w.detach().reshape(w.shape[0], -1).to(compute_dtype(w.dtype)))
        u, s, vt = cupy.linalg.svd(a, full_matrices=False)
        out_w.append(torch.from_dlpack((u * cupy.sqrt(s)) @ vt).reshape(w.shape).to(w.dtype))
    return out_w, [_scale_bias(b) for b in biases]


def refine_route(method: str) -> PeerFn:
    def fn(weights, biases):
        return torch.ops.svs.refine(list(weights), list(biases), "sqrt", BIAS_EPS, method)

    fn.__name__ = f"svs_refine_{method}"
    return fn


# --------------------------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------------------------
def load_ops() -> Optional[str]:
    """Imports svs_kernels (registers torch.ops.svs); returns why it failed, or None."""
    try:
        import svs_kernels  # noqa: F401
    except Exception as e:  # ImportError, or an OSError from the shared library
        return f"svs_kernels does not import: {type(e).__name__}: {e}"
    return None


def routes(device: str) -> Tuple[str, ...]:
    """The `method=` values of torch.ops.svs.refine on `device` ('cpu' or 'cuda') in this build;
    () where svs_kernels does not import or has no kernel for the device."""
    if load_ops():
        return ()
    return tuple(torch.ops.svs._method_names(device))


def our_routes(device: str) -> List[Peer]:
    why = load_ops()
    if why:
        return [Peer("svs.refine", None, why, ours=True)]
    methods = routes(device)
    if not methods:
        return [Peer("svs.refine", None, f"this build of svs_kernels has no {device} kernel", ours=True)]
    return [Peer(f"svs.refine {m}", refine_route(m), ours=True) for m in methods]


# The `method=` values per device, as the build reports them (what the results record).
ROUTES: Dict[str, Tuple[str, ...]] = {device: routes(device) for device in ("cpu", "cuda")}


def _cupy_skip() -> Optional[str]:
    try:
        import cupy  # noqa: F401
    except Exception as e:
        return f"CuPy not installed ({type(e).__name__}: {e})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no GPU"
    except Exception as e:
        return f"CuPy cannot use the GPU: {e}"
    return None


def peers_for(device: str) -> List[Peer]:
    """Every peer for `device` ('cpu' or 'cuda'), in table order; `skip` says why one cannot run."""
    numpy_note = "CPU numpy (float32), includes device<->host copies" if device == "cuda" else "numpy float32"
    peers = [
        Peer("authors numpy loop", authors_numpy_loop, note=numpy_note),
        Peer(BASELINE, torch_svd_per_layer),
        Peer("torch.linalg.svd batched per shape", torch_svd_batched),
    ]
    if device == "cuda":
        peers.append(Peer("cupy.linalg.svd per layer", cupy_svd_per_layer, _cupy_skip()))
    else:
        peers.append(Peer("cupy.linalg.svd per layer", None, "GPU only (see the CUDA table)"))
    peers.extend(our_routes(device))
    return peers


# --------------------------------------------------------------------------------------------
# The float64 reference
# --------------------------------------------------------------------------------------------
def reference(weights: Sequence[torch.Tensor], chunk_bytes: int = 256 << 20) -> List[torch.Tensor]:
    """U sqrt(S) V^T of every weight from a float64 torch.linalg.svd (LAPACK on CPU, cuSOLVER on
    CUDA) of its values (float32, bfloat16 and float16 convert to float64 exactly), as float64
    (m, n) matrices; batched per shape, no rank cut-off."""
    out: List[Optional[torch.Tensor]] = [None] * len(weights)
    for (m, n), idx in group_by_shape(weights).items():
        per = max(1, chunk_bytes // (8 * (m * n + min(m, n) * (m + n))))
        for start in range(0, len(idx), per):
            part = idx[start:start + per]
            a = torch.stack([weights[i].reshape(m, n) for i in part]).double()
            u, s, vh = torch.linalg.svd(a, full_matrices=False)
            r = (u * s.sqrt().unsqueeze(-2)) @ vh
            for j, i in enumerate(part):
                out[i] = r[j].clone()
    return out  # type: ignore[return-value]


def max_rel_err(outputs: Sequence[torch.Tensor], refs: Sequence[torch.Tensor]) -> float:
    """max over matrices of ||W' - W'_ref||_F / ||W'_ref||_F, each output as returned (in its dtype)
    converted to float64 (NaN if any output is NaN)."""
    errs = [torch.linalg.vector_norm(o.reshape(r.shape).double() - r) / torch.linalg.vector_norm(r)
            for o, r in zip(outputs, refs)]
    if not errs:
        return float("nan")
    return torch.stack(errs).max().item()  # one device sync, not one per matrix


def max_bias_err(out_biases, biases) -> float:
    worst = 0.0
    for o, b in zip(out_biases, biases):
        if b is None:
            continue
        bd = b.double()
        ref = bd / torch.sqrt(torch.linalg.vector_norm(bd) + BIAS_EPS)
        worst = max(worst, (torch.linalg.vector_norm(o.double() - ref) / torch.linalg.vector_norm(ref)).item())
    return worst
