// Numerical rules shared by every kernel of svs::refine (the ATen route, the CUDA routes).
// Torch-free, so the device code (csrc/cuda/*.cu) includes it too: one definition of each number.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace svs {

// Gram routes under method="auto": a matrix whose Gram eigenvalues span more than this ratio
// (kappa^2; 1e8 is kappa 1e4, where the float64 Gram route's error n * eps64 * kappa^1.5 reaches
// ~1e-10) is redone with an exact SVD.
constexpr double kGramMaxEigenRatio = 1e8;

constexpr double kEps64 = std::numeric_limits<double>::epsilon();

// Relative threshold (times s_max) below which a singular value counts as zero: max(m, n) * eps,
// the rounding error of a backward-stable SVD in precision eps, so a value under it carries no
// information about W.
inline double rank_tolerance(int64_t rows, int64_t cols, double eps) {
  return static_cast<double>(std::max(rows, cols)) * eps;
}

// The same for singular values taken as sqrt of float64 Gram eigenvalues: eigenvalue noise is
// ~max(m, n) * eps64 * l_max, so singular value noise is its square root.
inline double gram_rank_tolerance(int64_t rows, int64_t cols) {
  return std::sqrt(rank_tolerance(rows, cols, kEps64));
}

// The route that decomposed a matrix, as svs::refine_with_spectra reports it per weight; the
// operator svs::_route_names lists the names by code.
enum RouteCode : int8_t {
  kRouteAtenSvd = 0,     // ATen route (CPU kernel, or method="aten"): float64 SVD
  kRouteAtenGram,        // ATen route: float64 Gram + eigh
  kRouteCudaSmall,       // CUDA: gesvdjBatched on 32x32 padding
  kRouteCudaGramPadded,  // CUDA: Gram padded to 32x32, syevjBatched
  kRouteCudaGram,        // CUDA: Gram, XsyevBatched / Xsyevd
  kRouteCudaJacobi,      // CUDA: gesvdj
  kRouteCudaExact,       // CUDA: gesvd
  kRouteFallbackSvd,     // CUDA: failed its certificate, recomputed by the ATen route's SVD
  kRouteFallbackGram,    // CUDA: failed its certificate, recomputed by the ATen route's Gram
  kRouteAtenGram32,      // ATen route: float32 Gram + eigh (bfloat16/float16 outputs, precision.h)
  kRouteCudaGram32,      // CUDA: float32 Gram, float32 XsyevBatched / Xsyevd (precision.h)
  kRouteCudaGramPadded32,  // CUDA: float32 Gram padded to 32x32, float32 syevjBatched (precision.h)
};
constexpr const char* kRouteNames[] = {"aten:svd",  "aten:gram",   "cuda:small", "cuda:gram-padded",
                                       "cuda:gram", "cuda:jacobi", "cuda:svd",   "fallback:aten:svd",
                                       "fallback:aten:gram", "aten:gram32", "cuda:gram32",
                                       "cuda:gram-padded32"};

// Whether a route decomposed in float32 (precision.h): only for bfloat16/float16 outputs.
inline bool is_float32_route(int8_t route) {
  return route == kRouteAtenGram32 || route == kRouteCudaGram32 || route == kRouteCudaGramPadded32;
}

// The machine epsilon the route's decomposition worked in (the certificate's Precision::decompose).
inline double decomposition_eps(int8_t route) {
  return is_float32_route(route) ? std::numeric_limits<float>::epsilon() : kEps64;
}

// Whether a route's singular values come from eigenvalues of a Gram matrix (its error grows
// with the condition number; the certificate's tolerance follows it).
inline bool is_gram_route(int8_t route) {
  return route == kRouteAtenGram || route == kRouteCudaGramPadded || route == kRouteCudaGram ||
         route == kRouteFallbackGram || is_float32_route(route);
}

}  // namespace svs
