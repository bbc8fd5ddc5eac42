"""torch.ops.svs.refine on CUDA: the CUDA kernel against the CPU kernel, the float64 numpy
reference (tests/reference.py), and its own method="aten" route on the same GPU (device-generic
ATen calls in float64: the exact fallback every GPU has). The GPU tests are skipped without a GPU or without the CUDA kernel
in the build; the last two tests run everywhere.

Tolerances: relative Frobenius error of each output against the float64 reference computed from
the same input values.
- The CUDA kernel decomposes in float64 on every route (but for bf16/fp16 weights under "auto",
  whose Gram routes try float32 first: test_float32_plan_*) and hands float32 factors (float64 for
  float64 inputs) to svs._reconstruct, which multiplies them in float32 (the Triton kernel's
  default 3xTF32 is estimated at 1-3e-6 relative, the composite fallback is IEEE float32).
- float32 out: 1e-5. Rounding the orthonormal factors and f(s) to float32 perturbs every rank-1
  term u_i f(s_i) v_i^T by ~2 * 2^-24 of its own size, and the float32 GEMM accumulates k products:
  worst case ~k * 2^-24 (1.2e-5 at k = 200, the largest short side here; the 1100 x 1300 test
  relies on the typical case), typically sqrt(k) * 2^-24 ~ 1e-6. The condition number does not enter, so kappa 1e6 is fine: the small
  singular values come from a float64 decomposition (absolute error ~eps64 * s_max, 2e-10 relative
  to s_max / 1e6), and a factor's float32 rounding is relative to its own term. (A float32
  decomposition would not be: sqrt turns an error eps32 * s_max in s_min = s_max / kappa into a
  relative output error ~eps32 * sqrt(kappa) / 2 ~ 6e-5 at kappa 1e6.)
- float64 out: 1e-8, as on the CPU: float64 factors; the Gram route's error ~n * eps64 * kappa^1.5
  and "auto" keeps its result only for kappa <= 1e4 (else Jacobi).
- float16 / bfloat16 out: reference.TOL (the output's rounding, 2^-11 / 2^-8, dominates).
- CUDA against the CPU kernel directly: the sum of both kernels' tolerances.
"""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import svs_kernels
from tests.csrc.calls import float32_switch, refine, refine_, refine_with_spectra
from tests.reference import TOL, assert_matches, reference_bias, reference_refine

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "cuda"
HAS_CUDA = torch.cuda.is_available() and svs_kernels.has_cuda_kernel()
requires_cuda = pytest.mark.skipif(
    not HAS_CUDA,
    reason="needs a GPU and the CUDA kernel of svs::refine (a CUDA build of torch, built with nvcc); "
    "run .ci/gpu_check.sh on a GPU machine",
)

METHODS = ["auto", "jacobi", "gram", "svd", "aten"]
CUSOLVER_METHODS = ["auto", "jacobi", "gram", "svd"]
MAPS = ["sqrt", "log1p", "abslog", "power:0.3", "ones", "spectral", "square", "identity"]
# float32 / float64 tolerances of the CUDA kernel (module docstring); half types as on the CPU.
CUDA_TOL = {torch.float64: 1e-8, torch.float32: 1e-5, torch.float16: TOL[torch.float16],
            torch.bfloat16: TOL[torch.bfloat16]}
# (m, n) covering every route: both sides <= 32 (one gesvdjBatched), short side <= 32 < long side
# (padded Gram, one syevjBatched), larger (Gram per shape / Jacobi / gesvd).
SHAPES = [(1, 1), (1, 17), (17, 1), (1, 200), (200, 1), (7, 40), (40, 7), (32, 32), (5, 32),
          (33, 33), (3, 100), (100, 3), (96, 16), (64, 288), (288, 64), (200, 120)]


def with_spectrum(m: int, n: int, kappa: float, scale: float, seed: int) -> np.ndarray:
    """m x n float64 matrix with log-spaced singular values from scale down to scale / kappa."""
    g = np.random.default_rng(seed)
    k = min(m, n)
    u, _ = np.linalg.qr(g.standard_normal((m, k)))
    v, _ = np.linalg.qr(g.standard_normal((n, k)))
    return (u * (scale * np.logspace(0, -np.log10(kappa), k))) @ v.T


def on_device(ts):
    return [None if t is None else t.to(DEVICE) for t in ts]


def check_against_cpu(w: torch.Tensor, out: torch.Tensor, map: str = "sqrt", method: str = "svd"):
    """out (from the CUDA kernel) against the float64 reference and against the CPU kernel."""
    assert out.dtype == w.dtype and out.shape == w.shape and out.is_contiguous()
    tol = CUDA_TOL[w.dtype]
    assert_matches(out, reference_refine(w, map), tol)
    (cpu,), _ = refine([w.cpu()], map=map, method=method)
    assert_matches(out, cpu.double().numpy(), tol + TOL[w.dtype])


# ---- accuracy: every route, shape class and method ---------------------------------------------
@requires_cuda
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("log_kappa", [0, 3, 6])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_reference_and_cpu(shape, dtype, log_kappa, method):
    if method == "gram" and log_kappa > 4:
        pytest.skip("method='gram' is only accurate for kappa <= 1e4 (float64 Gram: eps64 * kappa^1.5)")
    seed = hash((shape, log_kappa)) % 2**32
    w = torch.from_numpy(with_spectrum(*shape, 10.0**log_kappa, 3.0, seed)).to(dtype)
    (out,), _ = refine(on_device([w]), map="sqrt", method=method)
    assert out.device.type == torch.device(DEVICE).type
    check_against_cpu(w, out.cpu())


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", METHODS)
def test_half_precision_inputs(dtype, method):
    shapes = [(1, 9), (9, 1), (20, 30), (16, 144), (64, 288), (150, 40)]
    ws = [torch.from_numpy(with_spectrum(*s, 1e3, 1.0, i)).to(dtype) for i, s in enumerate(shapes)]
    new_w, _ = refine(on_device(ws), method=method)
    for w, nw in zip(ws, new_w):
        check_against_cpu(w, nw.cpu())


@requires_cuda
@pytest.mark.parametrize("map", MAPS)
@pytest.mark.parametrize("method", ["auto", "jacobi", "svd"])
def test_every_map(map, method):
    shapes = [(1, 5), (12, 20), (10, 70), (48, 96)]
    ws = [torch.from_numpy(with_spectrum(*s, 1e2, 1.0, 7 + i)).float() for i, s in enumerate(shapes)]
    new_w, _ = refine(on_device(ws), map=map, method=method)
    for w, nw in zip(ws, new_w):
        check_against_cpu(w, nw.cpu(), map=map)


@requires_cuda
@pytest.mark.parametrize("method", METHODS)
def test_mixed_shapes_ndims_and_dtypes_in_one_call(method, rng):
    """One call: 4-D convs, 3-D, Linear, 1xN/Nx1, repeated shapes, float16/32/64 together (the
    routes share buffers between dtypes), with and without biases."""
    spec = [((64, 32, 3, 3), torch.float32), ((10, 20), torch.float32), ((64, 32, 3, 3), torch.float32),
            ((1, 7), torch.float64), ((7, 1), torch.float32), ((3, 4, 5), torch.float16),
            ((128, 2304), torch.float32), ((5, 5, 1, 1), torch.float64), ((40, 6), torch.float32),
            ((24, 16, 1, 1), torch.float16), ((10, 20), torch.float64), ((300, 30), torch.float32)]
    ws = [torch.from_numpy(rng.standard_normal(s)).to(d) for s, d in spec]
    bs = [torch.from_numpy(rng.standard_normal(s[0])).to(d) if i % 2 else None for i, (s, d) in enumerate(spec)]
    new_w, new_b = refine(on_device(ws), on_device(bs), method=method)
    for w, b, nw, nb in zip(ws, bs, new_w, new_b):
        check_against_cpu(w, nw.cpu())
        assert (nb is None) == (b is None)
        if b is not None:
            assert nb.dtype == b.dtype and nb.device.type == torch.device(DEVICE).type
            assert_matches(nb.cpu(), reference_bias(b))


@requires_cuda
@pytest.mark.parametrize("method", ["auto", "jacobi", "svd"])
def test_many_small_matrices(method):
    """Thousands of matrices: both sides <= 32 (one gesvdjBatched) and short side <= 32 (one
    syevjBatched), like the tiny-batch workload."""
    g = np.random.default_rng(3)
    shapes = [(int(g.integers(1, 33)), int(g.integers(1, 33))) for _ in range(3000)]
    shapes += [(int(g.integers(1, 33)), int(g.integers(33, 200))) for _ in range(300)]
    ws = [torch.from_numpy(g.standard_normal(s)).float() for s in shapes]
    new_w, _ = refine(on_device(ws), method=method)
    cpu_w, _ = refine(ws, method="svd")
    for w, nw, cw in zip(ws, new_w, cpu_w):
        assert nw.shape == w.shape
        assert_matches(nw.cpu(), cw.double().numpy(), CUDA_TOL[torch.float32] + TOL[torch.float32])


@requires_cuda
@pytest.mark.parametrize("method", ["auto", "gram"])
def test_gram_beyond_batched_eigensolver_size(method):
    """Short side 1100 > the planner's batched_eigh_max_side (1024): Xsyevd per matrix on the side
    streams, next to a batched shape in the same call."""
    ws = [torch.from_numpy(with_spectrum(1100, 1300, 1e2, 1.0, 1)).float(),
          torch.from_numpy(with_spectrum(80, 90, 1e2, 1.0, 2)).float()]
    new_w, _ = refine(on_device(ws), method=method)
    for w, nw in zip(ws, new_w):
        assert_matches(nw.cpu(), reference_refine(w), CUDA_TOL[torch.float32])


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", CUSOLVER_METHODS)
def test_cusolver_routes_match_aten_route_on_the_same_gpu(method, dtype):
    """Every cuSOLVER route against method="aten" on the same GPU, one call over every shape class.
    Both are within their own tolerance of the float64 reference (CUDA_TOL, TOL), so they differ
    by at most the sum."""
    seed = 20261124
    log_kappa = 3  # inside the Gram route's accuracy range, so method="gram" is compared too
    ws = [torch.from_numpy(with_spectrum(*s, 10.0**log_kappa, 2.0, seed + i)).to(dtype) for i, s in enumerate(SHAPES)]
    bs = [torch.linspace(-1, 1, w.shape[0], dtype=dtype) for w in ws]
    new_w, new_b = refine(on_device(ws), on_device(bs), method=method)
    aten_w, aten_b = refine(on_device(ws), on_device(bs), method="aten")
    for w, nw, aw in zip(ws, new_w, aten_w):
        assert nw.dtype == aw.dtype == w.dtype and nw.shape == aw.shape == w.shape
        assert_matches(nw.cpu(), aw.cpu().double().numpy(), CUDA_TOL[dtype] + TOL[dtype])
        assert_matches(aw.cpu(), reference_refine(w), TOL[dtype])
    for nb, ab in zip(new_b, aten_b):
        assert_matches(nb.cpu(), ab.cpu().double().numpy(), TOL[dtype])


@requires_cuda
@pytest.mark.parametrize("method", CUSOLVER_METHODS)
def test_spectra_match_aten_route_on_the_same_gpu(method):
    """refine_with_spectra on CUDA: the same outputs as refine (to 1e-12: the same algorithm, at
    most a different reduction order in a library GEMM), singular values (descending, on the
    weight's device) as the ATen route's within 1e-10 * s_max (float64 inputs, kappa 1e2: the
    Gram routes' error n * eps64 * kappa * s_max <= 7e-12 for n <= 300), and a CUDA route code."""
    ws = [torch.from_numpy(with_spectrum(*s, 1e2, 2.0, 40 + i)) for i, s in enumerate(SHAPES)]
    new_w, _, spectra, routes = torch.ops.refine_with_spectra(on_device(ws), [None] * len(ws), "sqrt", 1e-8, method)
    plain_w, _ = refine(on_device(ws), method=method)
    _, _, aten_spectra, aten_routes = torch.ops.refine_with_spectra(on_device(ws), [None] * len(ws), "sqrt", 1e-8, "aten")
    names = list(torch.ops.svs._route_names())
    for nw, pw, s, a in zip(new_w, plain_w, spectra, aten_spectra):
        assert_matches(nw.cpu(), pw.cpu().numpy(), 1e-12)
        assert s.device == nw.device and s.dtype == torch.float64 and s.shape == a.shape
        assert (s[:-1] >= s[1:]).all()
        assert (s - a).abs().max().item() <= 1e-10 * a[0].item()
    assert all(names[r].startswith("cuda:") for r in routes.tolist())
    assert all(names[r].startswith("aten:") for r in aten_routes.tolist())


@requires_cuda
def test_small_route_beyond_one_batch():
    """More 32x32-padded matrices than one gesvdjBatched call takes (kTuning.max_small_batch =
    2^17, lower where the int workspace would overflow): the chunks must join seamlessly."""
    g = torch.Generator().manual_seed(5)
    stack = torch.randn(2**17 + 1000, 3, 5, generator=g)
    ws = list(stack.to(DEVICE).unbind(0))
    new_w, _ = refine(ws, method="auto")
    aten_w, _ = refine(ws, method="aten")
    out, ref = torch.stack(new_w).double(), torch.stack(aten_w).double()
    err = (out - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)
    assert err.max().item() <= CUDA_TOL[torch.float32] + TOL[torch.float32], err.argmax().item()


@requires_cuda
@pytest.mark.parametrize("method", ["auto", "gram"])
def test_batched_eigensolver_beyond_one_chunk(method):
    """More same-shape Gram matrices (k = 40 > 32) than one XsyevBatched call takes
    (kTuning.max_eigh_batch = 4096)."""
    g = torch.Generator().manual_seed(6)
    ws = list(torch.randn(5000, 40, 50, generator=g).to(DEVICE).unbind(0))
    new_w, _ = refine(ws, method=method)
    aten_w, _ = refine(ws, method="aten")
    out, ref = torch.stack(new_w).double(), torch.stack(aten_w).double()
    err = (out - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)
    assert err.max().item() <= CUDA_TOL[torch.float32] + TOL[torch.float32], err.argmax().item()


@requires_cuda
def test_large_ill_conditioned_matrix_is_redone_exactly():
    """kappa 1e7 at 600 x 900: outside the Gram route's range, so "auto" redoes it with gesvd."""
    w = torch.from_numpy(with_spectrum(600, 900, 1e7, 1.0, 8)).float()
    (out,), _ = refine(on_device([w]), method="auto")
    check_against_cpu(w, out.cpu())


# ---- the float32 plan of bf16/fp16 weights (csrc/precision.h, csrc/cuda/planner.h) ----------------
# The budget (precision.h's kFloat32Budget): a float32 decomposition adds at most this share of the
# output's unit roundoff.
FLOAT32_BUDGET = torch.ops.svs._gram32(torch.ones(1, 1, 1))[2]
# (shape, float64 Gram route): k > 32 (per-shape Gram) and k <= 32 < long side (padded), wide and tall.
GRAM_SHAPES = [((64, 256), "cuda:gram"), ((256, 64), "cuda:gram"), ((16, 200), "cuda:gram-padded"),
               ((200, 16), "cuda:gram-padded")]


def relative_error(out: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out.detach().cpu().double().numpy() - ref) / np.linalg.norm(ref))


def cpu_switch(shape, dtype, seed) -> float:
    """The condition number where the CPU kernel stops keeping its float32 Gram result
    (aten:gram32) for with_spectrum(*shape, kappa, 1.0, seed) in `dtype` (calls.float32_switch).
    The CPU and CUDA kernels decide with the same gram32_within_budget, each on its own float32
    Gram eigenvalues; those differ by float32 rounding only, far less than the factor 2 in kappa
    (2^1.5 in the bound, 4 in the smallest eigenvalue against its floor) that the tests keep from
    the switch."""
    def make(kappa: float) -> torch.Tensor:
        return torch.from_numpy(with_spectrum(*shape, kappa, 1.0, seed)).to(dtype)

    return float32_switch(make, 1.0, 1e8, 24)[0]


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,route", GRAM_SHAPES, ids=lambda v: f"{v[0]}x{v[1]}" if isinstance(v, tuple) else v)
def test_float32_plan_switches_at_the_bound(shape, route, dtype):
    """A bf16/fp16 weight at half the switch's condition number keeps its float32 Gram result
    (route + "32"); at twice the switch it is redone by the float64 route in the same call. Either
    result is within the float32 budget of the float64 route's own result (method="gram", no float32
    plan): error against the float64 reference <= that route's error + FLOAT32_BUDGET * u (the
    float32 decomposition's share; both results share the output rounding and the reconstruction's
    TF32 error, which the float64 route's error already contains)."""
    seed = 20261206
    switch = cpu_switch(shape, dtype, seed)
    ws = [torch.from_numpy(with_spectrum(*shape, kappa, 1.0, seed)).to(dtype) for kappa in (switch / 2, switch * 2)]
    new_w, _, _, routes = refine_with_spectra(on_device(ws))
    assert routes == [route + "32", route], (switch, routes)
    exact_w, _, _, exact_routes = refine_with_spectra(on_device(ws), method="gram")
    assert exact_routes == [route, route]
    u = torch.finfo(dtype).eps / 2
    for w, nw, ew in zip(ws, new_w, exact_w):
        assert nw.dtype == dtype and nw.shape == w.shape
        ref = reference_refine(w)
        assert relative_error(nw, ref) <= relative_error(ew, ref) + FLOAT32_BUDGET * u
        assert_matches(nw.cpu(), ref, CUDA_TOL[dtype])


@requires_cuda
@pytest.mark.parametrize("shape,route", GRAM_SHAPES, ids=lambda v: f"{v[0]}x{v[1]}" if isinstance(v, tuple) else v)
def test_float32_plan_only_for_half_outputs_under_auto(shape, route):
    """float32 and float64 weights keep the float64 routes, and so does an explicit method="gram"
    for bf16/fp16 (as on the CPU): at a condition number where a bf16 weight takes the float32 route."""
    seed = 20261207
    kappa = cpu_switch(shape, torch.bfloat16, seed) / 2
    w = torch.from_numpy(with_spectrum(*shape, kappa, 1.0, seed))
    for dtype, method, expected in [(torch.bfloat16, "auto", route + "32"), (torch.float16, "gram", route),
                                    (torch.bfloat16, "gram", route), (torch.float32, "auto", route),
                                    (torch.float64, "auto", route)]:
        x = w.to(dtype)
        (out,), _, _, routes = refine_with_spectra(on_device([x]), method=method)
        assert routes == [expected], (dtype, method)
        assert_matches(out.cpu(), reference_refine(x), CUDA_TOL[dtype])


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(40, 100), (100, 40), (12, 90), (90, 12)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_float32_plan_rank_deficient_and_tiny_inputs_take_float64(shape, dtype, rng):
    """An exactly rank-deficient bf16/fp16 weight (rows that copy others with power-of-two scales,
    exact in any dtype) has Gram eigenvalues under the float32 floor (precision.h): it is redone in
    float64 (Gram, or gesvd outside the Gram route's accuracy range), never kept in float32, and
    keeps its rank; a 1 x n weight takes the small route (no float32 form)."""
    m, n = shape
    r, short, long = 5, min(m, n), max(m, n)
    base = torch.from_numpy(rng.standard_normal((r, long))).to(dtype).double()
    a = torch.stack([base[i % r] * (-2.0) ** (i % 3) for i in range(short)])  # short x long, rank r
    w = (a if m <= n else a.T).contiguous().to(dtype)
    assert torch.equal(w.double(), a if m <= n else a.T)
    tiny = torch.from_numpy(rng.standard_normal((1, 17))).to(dtype)
    new_w, _, spectra, routes = refine_with_spectra(on_device([w, tiny]))
    assert not routes[0].endswith("32") and routes[1] == "cuda:small", routes
    assert (spectra[0][r:] == 0).all() and (spectra[0][:r] > 0).all()
    for x, out in zip([w, tiny], new_w):
        assert_matches(out.cpu(), reference_refine(x), CUDA_TOL[dtype])


# ---- rank, layout, biases -------------------------------------------------------------------------
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("method", ["auto", "jacobi", "svd"])
@pytest.mark.parametrize("shape", [(16, 20), (16, 40), (40, 16), (16, 100), (64, 300), (300, 64)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_exact_rank_deficiency_is_kept(shape, dtype, method, rng):
    """Rows that copy others (with sign flips and power-of-two scales) or are zero: exactly rank r
    in any precision. Singular values at the decomposition's noise level must not be lifted by the
    map (sqrt(1e-16) = 1e-8 would be visible); output singular values past r stay at the output
    dtype's rounding level (1e-6 for float32: the rank-r float32 factors multiply to a matrix
    whose extra singular values are GEMM rounding, ~2^-24 * ||W'||)."""
    m, n = shape
    r = 5
    short, long = min(m, n), max(m, n)
    base = rng.standard_normal((r, long))
    rows = [base[i % r] * (-2.0) ** (i % 3) for i in range(short - short // 4)] + [np.zeros(long)] * (short // 4)
    a = np.stack(rows)  # short x long
    w = torch.from_numpy(np.ascontiguousarray(a if m <= n else a.T)).to(dtype)
    assert w.shape == shape
    assert np.linalg.matrix_rank(w.double().numpy()) == r
    (out,), _ = refine(on_device([w]), method=method)
    out = out.cpu()
    s_out = np.linalg.svd(out.double().numpy(), compute_uv=False)
    noise = {torch.float64: 1e-13, torch.float32: 1e-6}[dtype]
    assert s_out[r - 1] > 1e-3 * s_out[0]
    assert np.all(s_out[r:] <= noise * s_out[0]), s_out[r:] / s_out[0]
    check_against_cpu(w, out)


@requires_cuda
@pytest.mark.parametrize("make_view", [
    lambda t: t.t(),                                   # transposed
    lambda t: t[::2, 1::3],                            # strided slice
    lambda t: t[3:, 2:],                               # storage offset
    lambda t: t.unsqueeze(-1).expand(-1, -1, 3),       # stride-0 dimension
    lambda t: t.reshape(30, 6, 2, 2).contiguous(memory_format=torch.channels_last),  # conv layout
], ids=["transposed", "strided", "offset", "expanded", "channels_last"])
@pytest.mark.parametrize("method", ["auto", "jacobi"])
def test_non_contiguous_inputs(make_view, method, rng):
    base = torch.from_numpy(rng.standard_normal((30, 24))).float()
    w_cpu = make_view(base)
    w = make_view(base.to(DEVICE))
    assert not w.is_contiguous()
    (out,), _ = refine([w], method=method)
    assert out.is_contiguous() and out.shape == w.shape
    check_against_cpu(w_cpu, out.cpu())


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_bias_rule(dtype, rng):
    w = torch.from_numpy(rng.standard_normal((50, 9))).to(dtype)
    long_b = torch.from_numpy(rng.standard_normal(100) * 10 ** rng.uniform(-3, 3)).to(dtype)
    b = long_b[::2]  # non-contiguous
    zero = torch.zeros(50, dtype=dtype)
    _, (nb, nz) = refine(on_device([w, w]), on_device([b, zero]), eps=1e-8)
    assert nb.dtype == dtype and nb.shape == b.shape
    assert_matches(nb.cpu(), reference_bias(b))
    _, (cpu_b,) = refine([w], [b], eps=1e-8)
    assert_matches(nb.cpu(), cpu_b.double().numpy())
    assert torch.count_nonzero(nz) == 0


@requires_cuda
@pytest.mark.parametrize("method", METHODS)
def test_zero_matrices_stay_zero(method):
    ws = [torch.zeros(8, 12), torch.zeros(40, 3), torch.zeros(70, 50)]
    for map in MAPS:
        new_w, _ = refine(on_device(ws), map=map, method=method)
        assert all(torch.count_nonzero(nw) == 0 for nw in new_w)


# ---- operator machinery -------------------------------------------------------------------------
@requires_cuda
def test_inplace_matches_functional(rng):
    ws = [torch.from_numpy(rng.standard_normal(s)).float().to(DEVICE) for s in [(16, 8, 3, 3), (30, 20), (16, 8, 3, 3)]]
    bs = on_device([torch.randn(16), None, torch.randn(16)])
    new_w, new_b = refine(ws, bs, map="log1p")
    ws2, bs2 = [w.clone() for w in ws], [None if b is None else b.clone() for b in bs]
    refine_(ws2, bs2, map="log1p")
    # refine_ calls the kernel per shape group, so batch composition differs: allow rounding.
    for a, e in zip(ws2, new_w):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    for a, e in zip([b for b in bs2 if b is not None], [b for b in new_b if b is not None]):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


@requires_cuda
@pytest.mark.parametrize("method", METHODS)
def test_opcheck_functional(method):
    ws = on_device([torch.randn(6, 3, 3, 3), torch.randn(10, 20, dtype=torch.float64), torch.randn(1, 5),
                    torch.randn(40, 50)])
    bs = on_device([torch.randn(6), None, torch.randn(1), None])
    torch.library.opcheck(torch.ops.svs.refine.default, (ws, bs), {"map": "sqrt", "eps": 1e-8, "method": method})


@requires_cuda
def test_opcheck_inplace():
    ws = on_device([torch.randn(6, 3, 3, 3), torch.randn(10, 20)])
    torch.library.opcheck(torch.ops.svs.refine_.default, (ws, on_device([torch.randn(6), torch.randn(10)])), {})


@requires_cuda
def test_compiles_with_torch_compile():
    fn = torch.compile(lambda ws, bs: torch.ops.svs.refine(ws, bs), fullgraph=True, backend="aot_eager")
    w, b = torch.randn(12, 5), torch.randn(12)
    (nw,), (nb,) = fn([w.to(DEVICE)], [b.to(DEVICE)])
    check_against_cpu(w, nw.cpu())


@requires_cuda
def test_bad_method_on_cuda():
    with pytest.raises(ValueError, match="method 'qr' is not available on CUDA; expected auto, aten"):
        refine(on_device([torch.randn(4, 4)]), method="qr")


# ---- always run (CPU too) ------------------------------------------------------------------------
def test_no_cuda_kernel_without_cuda_torch():
    """A CPU build of torch gets the CPU kernel only (setup.py's gate: torch.version.cuda and
    CUDA_HOME); exactly one kernel per dispatch key otherwise."""
    if torch.version.cuda is None:
        assert not svs_kernels.has_cuda_kernel()
    assert torch._C._dispatch_has_kernel_for_dispatch_key("svs::refine", "CPU")


def test_device_code_is_torch_free():
    """The .cu files and the headers they include take raw pointers, handles and streams only:
    no torch / ATen / c10 header (the torch binding is csrc/cuda/refine_cuda.cpp)."""
    cu_files = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
    assert cu_files, "no CUDA sources under csrc/cuda"
    include = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)
    seen, todo = set(), list(cu_files)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in include.findall(path.read_text()):
            assert not re.match(r"(torch|ATen|c10|caffe2)/", name), f"{path.name} includes <{name}>"
            local = path.parent / name
            if local.exists():
                todo.append(local)
