// The precision plan of svs::refine (issue 24): the decomposition works in the precision the
// result needs, per matrix, decided by the output dtype and by a bound the route computes.
//
// A bfloat16 or float16 result is rounded to 2^-8 or 2^-11 relative (unit roundoff u) whatever
// computed it, so a float64 decomposition buys nothing over a float32 one whose own error is a
// small fraction of u, and costs twice the flops and bytes. For those outputs the routes first
// decompose in float32 on the Gram side (float32 Gram matrix, float32 eigh, float32 product),
// then keep each matrix whose first-order error bound (gram32_error_bound) is within
// kFloat32Budget * u; every other matrix is redone on the float64 route as for float32 and
// float64 outputs, which keep the float64-grade promise.
//
// The bound. With G = M M^T (k x k, k the short side) = Q L Q^T and s_i = sqrt(l_i), the Gram
// route returns W' = Q g(L) Q^T M, g(l) = f(sqrt l) / sqrt l. float32 rounding perturbs G by
// dG; model ||dG||_2 <= delta = kGram32Noise * u32 * l_max (forming G and the eigensolver's
// backward error). To first order an eigenvalue moves by at most delta and a rotation between eigenvectors
// i and j (angle <= delta / |l_i - l_j|) moves W' by a divided difference of g; both are bounded,
// for direction i, by delta |g'(l_i)| s_i = delta |f'(s_i) s_i - f(s_i)| / (2 s_i^2). So
//     relative Frobenius error of W'  <=  delta || (|f'(s_i) s_i - f(s_i)| / (2 s_i^2))_i ||_2 / || f(s) ||_2
//                                        + kGram32Product sqrt(k) u32   (the float32 products)
// This is first order: it is taken only where every eigenvalue is above kGram32Floor * delta (so
// a perturbation of delta changes no eigenvalue by more than a fraction of itself); a matrix with
// an eigenvalue under that floor (rank-deficient, or too ill-conditioned for float32) is +inf
// and goes to float64. The derivative is each map's own (log1p, abslog included; spectral and
// identity are linear in W, their bound is the product's alone).
// The constants are measured, not proven: on random matrices (k = 32 to 3072, condition numbers
// 3 to 3000, spectra log-linear, with a clustered bottom tenth, or with one small value; maps sqrt
// and ones; every map at short sides up to 96) the error measured against float64 stayed within
// 0.41 x the bound (derivative term up to 15 delta / kGram32Noise, product term up to
// 3 sqrt(k) u32); tests/csrc/test_precision.py
// checks the bound against the float64 reference on fresh matrices at the switch.
#pragma once

#include <ATen/ATen.h>

#include "refine.h"

namespace svs {

// Share of the output's unit roundoff u a float32 decomposition may add: the bound must be at most
// u / 4. The rounding of the result to the output dtype is ~0.4 u relative (Frobenius), so were
// the bound attained the total would be sqrt(0.4^2 + 0.25^2) / 0.4 = 1.18 x the rounding alone;
// the measured error stays under 0.41 x the bound (below), which makes at most 1.03 x.
constexpr double kFloat32Budget = 1.0 / 4;
// delta = kGram32Noise * u32 * l_max models the float32 Gram matrix's and eigensolver's error;
// kGram32Product * sqrt(k) * u32 the relative error of the float32 products.
constexpr double kGram32Noise = 32.0;
constexpr double kGram32Product = 8.0;
// The first-order bound holds where every eigenvalue is at least kGram32Floor * delta.
constexpr double kGram32Floor = 4.0;
// Weights whose largest |entry| lies outside [2^-kGram32Range, 2^kGram32Range] go to float64,
// which scales them exactly: their float32 Gram matrix could underflow or overflow.
constexpr int kGram32Range = 40;

// Unit roundoff of a floating dtype: float64 2^-53, float32 2^-24, float16 2^-11, bfloat16 2^-8.
double unit_roundoff(at::ScalarType dtype);

// Whether a result of this dtype may come from a float32 decomposition (bfloat16, float16).
bool float32_eligible(at::ScalarType output);

// (B,) float64: the bound above for each matrix of a batch, from its float32 Gram eigenvalues
// l (B, k), ascending (any float dtype and device); +inf where it does not hold.
at::Tensor gram32_error_bound(const at::Tensor& l, const SigmaMap& map);

// (B,) bool: gram32_error_bound(l, map) <= kFloat32Budget * unit_roundoff(output).
at::Tensor gram32_within_budget(const at::Tensor& l, const SigmaMap& map, at::ScalarType output);

// (B,) bool: whether each matrix of a batch a (B, m, n) has its largest |entry| within
// 2^+-kGram32Range (a zero matrix is not).
at::Tensor gram32_in_range(const at::Tensor& a);

}  // namespace svs
