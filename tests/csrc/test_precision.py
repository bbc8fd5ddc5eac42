"""The precision plan (csrc/precision.h): bfloat16/float16 weights are decomposed in float32 where
the per-matrix error bound allows, in float64 elsewhere; float32/float64 weights always in float64.

Tolerances. The bound itself is what is tested: the float32 route's result (before the cast to the
output dtype, svs::_gram32) must be within its bound of the float64 reference, on fresh random
matrices (seeds printed). Through the operator, a result on the float32 route is rounded to the
output dtype, so its error against the reference is at most the rounding of the reference
plus the bound; the plan's goal is that this stays within 1.05x of the rounding alone
(kFloat32Budget = 1/4 of the unit roundoff, and the error under 0.41x the bound, precision.h:
sqrt(0.4^2 + 0.1^2) / 0.4 = 1.03).
"""
import numpy as np
import pytest
import torch

import svs_kernels  # noqa: F401  (registers torch.ops.svs)

from ..reference import reference_refine, rel_err
from .calls import float32_switch, refine_with_spectra

MAPS = ("sqrt", "log1p", "abslog", "power:0.3", "ones", "spectral", "square", "identity")
HALF = (torch.bfloat16, torch.float16)


def matrix(rng, m, n, kappa, kind="loglin", scale=1.0):
    """An m x n float64 matrix U diag(s) V^T, s_max = scale, condition number kappa: singular
    values log-linear ('loglin'), all 1 but a bottom tenth at 1/kappa ('bottom'), or all 1 but the
    last ('one')."""
    k = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, k)))
    v, _ = np.linalg.qr(rng.standard_normal((n, k)))
    t = np.arange(k) / max(k - 1, 1)
    if kind == "loglin":
        s = kappa ** -t
    else:
        s = np.ones(k)
        s[-(max(1, k // 10) if kind == "bottom" else 1):] = 1 / kappa
    return scale * (u * s) @ v.T


def rounded(x: np.ndarray, dtype) -> torch.Tensor:
    return torch.from_numpy(x).to(dtype)


def routes_of(weights, **kw):
    return refine_with_spectra(weights, **kw)[3]


# ---- 1. the bound holds -----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(48, 96), (96, 48), (64, 64), (1, 40), (40, 1), (8, 300)])
@pytest.mark.parametrize("kind", ["loglin", "bottom", "one"])
@pytest.mark.parametrize("kappa", [1.0, 10.0, 100.0, 1000.0])
def test_the_float32_route_is_within_its_bound(shape, kind, kappa, rng):
    """Every map, against the float64 reference of the same (bfloat16-exact) input: the float32
    result's error <= its bound wherever the bound is finite."""
    w = rounded(matrix(rng, *shape, kappa, kind), torch.bfloat16)
    for map in MAPS:
        out, bound, _ = torch.ops.svs._gram32(w.unsqueeze(0), map)
        if not np.isfinite(bound.item()):
            continue
        err = rel_err(out[0], reference_refine(w, map))
        assert err <= bound.item(), f"map {map}: error {err:.3e} > bound {bound.item():.3e}"


def test_the_bound_is_unbounded_where_float32_cannot_resolve(rng):
    """Rank-deficient matrices, a condition number past float32's reach (kappa^2 > 1/u32) and a
    zero matrix: no finite bound, whatever the map."""
    low_rank = rng.standard_normal((40, 5)) @ rng.standard_normal((5, 60))
    cases = [low_rank, matrix(rng, 40, 60, 1e5), np.zeros((40, 60))]
    for map in MAPS:
        _, bound, _ = torch.ops.svs._gram32(rounded(np.stack(cases), torch.float32), map)
        assert torch.isinf(bound).all(), (map, bound)


# ---- 2. the operator follows the plan -----------------------------------------------------------
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("kind", ["loglin", "one"])
def test_the_switch_at_the_boundary(dtype, kind, rng):
    """Just below the switch: the float32 route, within 1.05x of the rounding of the reference.
    Just above: a float64 route, no worse than the rounding of the reference (+ 1e-6)."""
    seed = int(rng.integers(2 ** 31))

    def make(kappa):
        return rounded(matrix(np.random.default_rng(seed), 64, 128, kappa, kind), dtype)

    below, above = (make(kappa) for kappa in float32_switch(make))
    assert routes_of([below, above]) == ["aten:gram32", "aten:gram"]
    for w in (below, above):
        ref = reference_refine(w)
        rounding = rel_err(torch.from_numpy(ref).to(dtype), ref)
        out, _ = torch.ops.svs.refine([w], [None])
        assert out[0].dtype == dtype
        limit = 1.05 * rounding if w is below else rounding + 1e-6
        assert rel_err(out[0], ref) <= limit


def test_only_half_weights_under_auto_take_the_float32_route(rng):
    """float32 and float64 weights keep the float64 routes; method="gram"/"svd" are float64 routes
    for every dtype; one call with several dtypes of one shape plans each dtype on its own."""
    x = matrix(rng, 24, 40, 10.0)
    mixed = [rounded(x, d) for d in (torch.bfloat16, torch.float32, torch.float16, torch.float64)]
    assert routes_of(mixed) == ["aten:gram32", "aten:gram", "aten:gram32", "aten:gram"]
    assert routes_of(mixed, method="gram") == ["aten:gram"] * 4
    assert routes_of(mixed, method="svd") == ["aten:svd"] * 4


@pytest.mark.parametrize("dtype", HALF)
def test_half_weights_float32_cannot_serve_go_to_float64(dtype, rng):
    """A rank-deficient weight, one too ill-conditioned, one with entries too small for a float32
    Gram matrix (2^-60, out of range): float64 routes, each within the rounding of its reference."""
    low_rank = matrix(rng, 30, 50, 10.0)
    low_rank[10:] = 0
    ws = [rounded(low_rank, dtype), rounded(matrix(rng, 30, 50, 1e4), dtype)]
    if dtype == torch.bfloat16:  # float16 cannot hold 2^-60
        ws.append(rounded(matrix(rng, 30, 50, 2.0, scale=2.0 ** -60), dtype))
    assert all(r in ("aten:gram", "aten:svd") for r in routes_of(ws))
    outs, _ = torch.ops.svs.refine(ws, [None] * len(ws))
    for w, out in zip(ws, outs):
        ref = reference_refine(w)
        assert rel_err(out, ref) <= rel_err(torch.from_numpy(ref).to(dtype), ref) + 1e-6


@pytest.mark.parametrize("dtype", HALF)
def test_non_contiguous_half_weights(dtype, rng):
    """A transposed (non-contiguous) view gives the result of its contiguous copy."""
    w = rounded(matrix(rng, 40, 24, 10.0), dtype).t()
    assert not w.is_contiguous()
    out, _ = torch.ops.svs.refine([w], [None])
    ref, _ = torch.ops.svs.refine([w.contiguous()], [None])
    assert routes_of([w]) == ["aten:gram32"]
    assert torch.equal(out[0], ref[0])


# ---- 3. many small matrices side by side ------------------------------------------------------------
def test_spreading_small_matrices_over_threads_changes_nothing(rng):
    """With chunks of small matrices run one per thread (the default) or all with LAPACK's own
    threads (limit 0): the same routes and results (each matrix is decomposed by the same
    sequence of calls either way; 1e-12 allows for a threaded BLAS's summation order)."""
    shapes = [(8, 8), (16, 48), (48, 16), (3, 200), (64, 64), (33, 90)] * 3
    ws = [rounded(matrix(rng, m, n, 30.0), dt) for (m, n), dt in
          zip(shapes, [torch.float32, torch.bfloat16, torch.float64] * 6)]
    previous = torch.ops.svs._cpu_spread_max_side()
    try:
        results = []
        for side in (previous, 0):
            assert torch.ops.svs._cpu_spread_max_side(side) in (previous, 0)
            results.append(torch.ops.svs.refine_with_spectra(ws, [None] * len(ws)))
    finally:
        torch.ops.svs._cpu_spread_max_side(previous)
    (spread, _, s1, r1), (alone, _, s2, r2) = results
    assert torch.equal(r1, r2)
    for a, b in zip(spread, alone):
        assert rel_err(a, b.double().numpy()) <= 1e-12 or torch.equal(a, b)
