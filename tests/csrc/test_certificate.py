"""The certificate of torch.ops.svs.refine (csrc/certificate.cpp).

1. It catches every corruption the test hook svs::_corrupt_next makes of one result, the way a bug
   would (transposed layout, reversed or rotated singular values, a wrong map, unconverged
   singular vectors, two results of a batch swapped): on the CPU routes (svd, gram, auto) as a
   RuntimeError naming the weight, with nothing written by refine_ (nor by refine_model and svs
   refine: tests/svs/test_model.py, test_cli.py); on the Triton reconstruction (interpreter on
   the CPU) through svs::_certify; on CUDA (skipped without a GPU) as one warning and a
   recomputation on the aten route. Each corruption is also shown to change the result by far
   more than the dtype's tolerance (certify=False returns it), so no test here passes because the
   hook did nothing.
2. It never fails a correct result: a derandomized property test over shapes down to 1x1, kappa up
   to 1e12, rank-deficient inputs, magnitudes from 1e-100 to 1e100 (float64), every dtype, map
   and CPU method.
3. The batched-Jacobi workspace cap of the CUDA kernel (csrc/int_workspace.h), on modelled size
   queries.
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import svs_kernels
from tests.csrc.calls import refine, refine_, refine_with_spectra
from tests.reference import TOL, assert_matches, rel_err, reference_refine, triton_interpreter_problem

KINDS = ["transpose", "reverse", "permute", "map", "unconverged", "swap"]
MAPS = ["sqrt", "log1p", "abslog", "power:0.3", "power:-0.5", "power:-2", "ones", "spectral", "square", "identity"]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
CHECKS = list(torch.ops.svs._certificate_checks())
ROUTES = list(torch.ops.svs._route_names())
HAS_CUDA = torch.cuda.is_available() and svs_kernels.has_cuda_kernel()


def with_spectrum(m: int, n: int, kappa: float, scale: float, seed: int, rank: int = None) -> np.ndarray:
    """m x n float64 matrix with log-spaced singular values from scale to scale / kappa, the ones
    past `rank` zero."""
    g = np.random.default_rng(seed)
    k = min(m, n)
    u, _ = np.linalg.qr(g.standard_normal((m, k)))
    v, _ = np.linalg.qr(g.standard_normal((n, k)))
    s = scale * np.logspace(0, -np.log10(kappa), k)
    if rank is not None:
        s[rank:] = 0
    return (u * s) @ v.T


def weights(shape, dtype, seed, count=3, device="cpu"):
    """`count` weights of one shape with well separated singular values (kappa 1e2), so that every
    corruption kind changes the result (a permutation of equal values would not)."""
    return [torch.from_numpy(with_spectrum(*shape, 1e2, 3.0, seed + i)).to(dtype).to(device) for i in range(count)]


# ---- 1. CPU routes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", ["svd", "gram", "auto"])
@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (32, 32)])
@pytest.mark.parametrize("kind", KINDS)
def test_cpu_certificate_catches_every_corruption(kind, shape, method, dtype, seed):
    ws = weights(shape, dtype, seed)
    good, _ = refine(ws, method=method)
    torch.ops.svs._corrupt_next(kind, 1)
    bad, _ = refine(ws, method=method, certify=False)  # the hook did corrupt it
    assert rel_err(bad[1], good[1].double().numpy()) > 20 * TOL[dtype]
    torch.ops.svs._corrupt_next(kind, 1)
    # "swap" corrupts weights[1] and its partner in its chunk (chunks are cut per thread), either named
    named = "[0-2]" if kind == "swap" else "1"
    with pytest.raises(RuntimeError, match=rf"the result for weights\[{named}\] .*route aten:(svd|gram|gram32)\) fails its certificate"):
        refine(ws, method=method)


def test_the_hook_fires_once_and_on_the_named_weight(seed):
    ws = weights((20, 30), torch.float32, seed)
    good, _ = refine(ws)
    torch.ops.svs._corrupt_next("reverse", 2)
    bad, _ = refine(ws, certify=False)
    assert [torch.equal(a, b) for a, b in zip(bad, good)] == [True, True, False]
    again, _ = refine(ws)  # disarmed
    assert all(torch.equal(a, b) for a, b in zip(again, good))
    torch.ops.svs._corrupt_next("reverse", 5)
    with pytest.raises(RuntimeError, match=r"weights\[5\] is not in a call of 3 weights"):
        refine(ws)
    with pytest.raises(RuntimeError, match="unknown kind 'scramble'"):
        torch.ops.svs._corrupt_next("scramble", 0)


def test_refine_inplace_writes_nothing_when_a_certificate_fails(seed):
    """Two shape groups; the corrupted weight is in the second one, so the first group's results
    were computed and certified before the failure: none of them may be written."""
    ws = weights((16, 24), torch.float32, seed, 2) + weights((10, 12), torch.float32, seed + 9, 2)
    bs = [torch.randn(w.shape[0]) for w in ws]
    before = [t.clone() for t in ws + bs]
    torch.ops.svs._corrupt_next("map", 2)
    with pytest.raises(RuntimeError, match=r"weights\[2\] .*fails its certificate"):
        refine_(ws, bs)
    assert all(torch.equal(a, b) for a, b in zip(ws + bs, before))


def scores(ws, outs, spectra, routes, map="sqrt", reconstruct=0.0):
    """svs::_certify: (residuals, tolerances), each (N, checks)."""
    r = torch.ops.svs._certify(ws, outs, spectra, routes, map, reconstruct)
    return r[:, : len(CHECKS)], r[:, len(CHECKS):]


def test_symmetry_probes_see_what_the_norms_cannot(seed):
    """U rotated in the plane of its first two columns (an unconverged Jacobi step) keeps ||W'||
    and the spectrum; only the symmetry probes see it, far above their tolerance."""
    w = torch.from_numpy(with_spectrum(30, 20, 1e2, 1.0, seed))
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    c, t = np.cos(0.05), np.sin(0.05)
    g = torch.eye(20, dtype=torch.float64)
    g[:2, :2] = torch.tensor([[c, -t], [t, c]])
    out = (u @ g) * s.sqrt() @ vh
    res, tol = scores([w], [out], [s], [ROUTES.index("aten:svd")])
    fails = {name for name, r, t_ in zip(CHECKS, res[0], tol[0]) if r > t_}
    assert fails >= {"left-symmetry", "right-symmetry"} and "norm" not in fails and "energy" not in fails
    assert (res[0, CHECKS.index("left-symmetry")] > 1e3 * tol[0, CHECKS.index("left-symmetry")]).item()


def test_certify_is_cheap_to_switch_off_and_changes_nothing(seed):
    ws = weights((20, 30), torch.float32, seed)
    a, _ = refine(ws)
    b, _ = refine(ws, certify=False)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ---- 2. no false alarm -------------------------------------------------------------------------------
SHAPES = [(1, 1), (1, 2), (2, 1), (1, 37), (37, 1), (2, 2), (3, 50), (50, 3), (33, 33), (40, 64), (96, 16), (128, 300)]
LOG_SCALE = {torch.float64: (-100, 100), torch.float32: (-15, 15), torch.float16: (-2, 3), torch.bfloat16: (-15, 15)}


@st.composite
def dtype_and_scale(draw):
    """A dtype and a magnitude within its range (float64: 1e-100 to 1e100)."""
    dtype = draw(st.sampled_from(DTYPES))
    return dtype, 10 ** draw(st.floats(*LOG_SCALE[dtype]))


@settings(max_examples=400, deadline=None)
@given(shape=st.sampled_from(SHAPES), log_kappa=st.floats(0, 12), rank=st.sampled_from([None, 1, 2, 5, 20]),
       dtype_scale=dtype_and_scale(), map=st.sampled_from(MAPS), method=st.sampled_from(["auto", "svd", "gram"]),
       seed=st.integers(0, 2**32 - 1))
def test_no_false_alarm(shape, log_kappa, rank, dtype_scale, map, method, seed):
    dtype, scale = dtype_scale
    w = torch.from_numpy(with_spectrum(*shape, 10**log_kappa, scale, seed, rank)).to(dtype)
    try:
        refine([w], map=map, method=method)
    except RuntimeError as err:  # a map that takes the result past the dtype's range is not an alarm
        assert "overflows" in str(err), str(err)


@pytest.mark.parametrize("map", MAPS)
@pytest.mark.parametrize("method", ["auto", "svd", "gram"])
def test_no_false_alarm_at_the_extremes(map, method, seed):
    """float64 at kappa 1e12, an exactly rank-3 matrix (rows that copy others), float16 with
    entries near its largest value, and float64 at 1e+-85 (the fourth powers the checks form
    leave float64's range unless the matrix is scaled), through every map and method."""
    g = np.random.default_rng(seed)
    base = g.standard_normal((3, 48))
    cases = [torch.from_numpy(with_spectrum(64, 48, 1e12, 1.0, seed)),
             torch.from_numpy(np.stack([base[i % 3] * (-2.0) ** (i % 4) for i in range(20)])),
             (torch.from_numpy(with_spectrum(16, 24, 10.0, 1.0, seed)) * 6e4 / 2).half(),
             torch.from_numpy(with_spectrum(40, 64, 1e3, 1e-85, seed)),
             torch.from_numpy(with_spectrum(40, 64, 1e3, 1e85, seed))]
    for w in cases:
        try:
            refine([w], map=map, method=method)
        except RuntimeError as err:
            assert "overflows" in str(err), str(err)


# ---- the Triton reconstruction (interpreter on the CPU, compiled on a GPU) ----------------------------
def _triton():
    from svs_kernels import triton_ops

    if not triton_ops.available():
        return None, f"triton is not importable: {triton_ops.import_error()!r}"
    from svs_kernels.triton_ops import common
    from svs_kernels.triton_ops import reconstruct as R

    if not torch.cuda.is_available() and not common.interpreting():
        return None, "no CUDA and triton was imported without TRITON_INTERPRET=1"
    if common.interpreting():
        problem = triton_interpreter_problem()
        if problem:
            return None, problem
    return R, None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])  # the interpreter truncates bfloat16
def test_triton_reconstruction_passes_and_its_corruptions_fail(dtype, seed):
    """Factors from a float64 SVD in float32 (as the CUDA kernel hands them over), reconstructed by
    the Triton kernel; the certificate's reconstruction bound is the CUDA kernel's
    (refine_cuda.cpp reconstruct_error: operand rounding + (k + 2) 2^-23)."""
    R, why = _triton()
    if R is None:
        pytest.skip(why)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = (32, 32)
    inputs = [w.to(device) for w in weights(shape, dtype, seed, 2)]
    f32 = [torch.linalg.svd(w.double(), full_matrices=False) for w in inputs]  # of the input as stored
    u, s, vh = ([x[i].float() for x in f32] for i in range(3))
    rec = (2.0**-10 if dtype == torch.float16 else 2.0**-20) + (shape[0] + 2) * 2.0**-23
    code = [ROUTES.index("cuda:svd")] * 2
    spectra = [x[1] for x in f32]

    def certify_reconstruction(u_, s_, vh_, map="sqrt", swap=False):
        out = [torch.empty(shape, dtype=dtype, device=device) for _ in inputs]
        R.reconstruct(u_, s_, vh_, out, map)
        return scores(inputs, out[::-1] if swap else out, spectra, code, "sqrt", rec)

    res, tol = certify_reconstruction(u, s, vh)
    assert (res <= tol).all(), (res / tol)
    corrupted = {
        "transpose": ([x.mT for x in vh], s, [x.mT for x in u]),
        "reverse": (u, [x.flip(0) for x in s], vh),
        "map": (u, s, vh, "identity"),
        "unconverged": (u, s, [x + 0.3 / 32**0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x)
                               for x in vh]),
    }
    for kind, args in corrupted.items():
        res, tol = certify_reconstruction(*args)
        assert (res > tol).any(dim=1).all(), kind
    res, tol = certify_reconstruction(u, s, vh, swap=True)
    assert (res > tol).any(dim=1).all(), "swap"


# ---- CUDA (skipped without a GPU) --------------------------------------------------------------------
@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and the CUDA kernel of svs::refine (run .ci/gpu_check.sh)")
@pytest.mark.parametrize("method", ["auto", "jacobi", "gram", "svd"])
@pytest.mark.parametrize("shape", [(24, 30), (24, 40), (48, 40)])  # small, gram-padded, gram/jacobi/svd
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_recomputes_a_failed_result_on_the_aten_route(kind, shape, method, seed):
    ws = weights(shape, torch.float32, seed, device="cuda")
    torch.ops.svs._corrupt_next(kind, 1)
    with pytest.warns(UserWarning, match=r"failed the certificate .*weights\[1\] \(cuda:[a-z-]+, [a-z-]+ residual"):
        new_w, _, _, routes = refine_with_spectra(ws, method=method)
    assert routes[1].startswith("fallback:aten:") and not routes[0].startswith("fallback")
    assert_matches(new_w[1], reference_refine(ws[1]), 1e-5)
    if kind == "swap":
        assert routes[2].startswith("fallback:aten:")
        assert_matches(new_w[2], reference_refine(ws[2]), 1e-5)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and the CUDA kernel of svs::refine (run .ci/gpu_check.sh)")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["auto", "jacobi", "gram", "svd", "aten"])
def test_cuda_no_false_alarm(dtype, method, seed, recwarn):
    shapes = [(1, 1), (1, 200), (7, 40), (32, 32), (33, 33), (64, 288), (288, 64)]
    ws = [torch.from_numpy(with_spectrum(*s, 1e4, 2.0, seed + i)).to(dtype).cuda() for i, s in enumerate(shapes)]
    _, _, _, routes = refine_with_spectra(ws, method=method)
    assert not any(r.startswith("fallback") for r in routes)
    assert not [w for w in recwarn if "certificate" in str(w.message)]


# ---- 3. the batched-Jacobi workspace cap --------------------------------------------------------------
INT_MAX = 2**31 - 1


@pytest.mark.parametrize("base,per,align,want,expected", [
    (100, 2000, 1, 1 << 17, 1 << 17),       # affine, fits: the whole batch
    (100, 2000, 4096, 1 << 17, 1 << 17),    # rounded up to an alignment: not affine, still the whole batch
    (0, 40_000, 1, 1 << 17, 32_768),        # 40k doubles per matrix: 53,687 fit; the chain's last fit is 32,768
    (100, 1 << 20, 1, 1 << 17, 1024),       # 2048 matrices would wrap the int negative
    (100, 2000, 1, 1000, 1000),             # want is not a power of two
    (5000, 0, 1, 1 << 17, 1 << 17),         # the workspace does not grow
    (3 << 30, 1, 1, 1 << 17, 1),            # even one matrix overflows: 1 (the solver then rejects lwork)
])
def test_int_workspace_cap(base, per, align, want, expected):
    cap = torch.ops.svs._int_workspace_batch(base, per, align, want)
    assert cap == expected
    if expected > 1:
        assert base + cap * per + align <= INT_MAX  # the accepted count is exact
