// Routes of the CUDA kernel of svs::refine and the planner that sends each matrix to one.
// Torch-free; the numbers that decide method="auto" live in kAutoPlan and kTuning below.
#pragma once

#include <cstdint>
#include <limits>
#include <string>

#include "constants.h"  // kGramMaxEigenRatio, rank tolerances (shared with the ATen route)
#include "svs_cuda.h"   // kSmallDim

namespace svs {
namespace cuda {

// Compute precision, by output dtype (the plan of precision.h, as on the ATen route):
//   - float32 and float64 outputs: every decomposition runs in float64.
//       sqrt amplifies the error of small singular values: with a float32 SVD a component with
//       s = s_max / kappa gets a relative error ~ eps32 * kappa, so the output is off by about
//       eps32 * sqrt(kappa) / 2 ~ 6e-5 at kappa 1e6, and the float32 rank tolerance
//       max(m, n) * eps32 (~4e-6 for 32x32, ~1e-4 for 1000 columns) would zero singular values
//       that the float64 CPU kernel keeps. In float64 the CUDA kernel follows the CPU reference
//       (same rank rule and Gram threshold, constants.h). H100/H200 run FP64 at half the FP32
//       vector rate and DGEMM on FP64 tensor cores at the FP32 rate.
//   - bf16 and fp16 outputs (float32_eligible) under method="auto": the Gram routes run in float32
//       first (kRouteCudaGram32, kRouteCudaGramPadded32: SGEMM, float32 eigensolvers), and each
//       matrix keeps that result only where gram32_within_budget holds for its float32 Gram
//       eigenvalues: precision.h's first-order bound on the decomposition's relative error
//       (gram32_error_bound: the Gram matrix's and eigensolver's float32 error delta ~ u32 * l_max
//       carried through the map's derivative, plus the float32 products; +inf unless every
//       eigenvalue is well above delta) is at most kFloat32Budget = 1/4 of the output's unit
//       roundoff (2^-8 bf16, 2^-11 fp16), so the result's error is at most ~1.03x its rounding
//       alone (as measured, precision.h). The CUDA Gram route computes the same W' = Q g(L) Q^T M as the ATen route the bound
//       was derived for (U = Q, Vh = diag(1/s) Q^T M, or the transpose), so the bound holds
//       for it as it stands; the reconstruction's own error (svs::_reconstruct) comes on top on
//       every route alike. Any other matrix (rank-deficient, too ill-conditioned, not converged)
//       is redone on the float64 Gram route, as without the plan. Each matrix is first scaled by a
//       power of two (max |entry| in [1/2, 1)), so its float32 Gram matrix neither underflows nor
//       overflows: the ATen route's gram32_in_range is not needed here.
// The factors handed to svs::_reconstruct are float32 (float64 for float64 inputs): rounding
// orthonormal factors costs ~1e-7 relative, independent of kappa.

// The routes are the CUDA RouteCodes of constants.h (the codes and names that
// svs::refine_with_spectra reports), one vocabulary for the planner and the report:
//   kRouteCudaSmall       both sides <= 32: zero-pad to 32x32, ONE gesvdjBatched for all such
//                         matrices
//   kRouteCudaGramPadded  short side k <= 32 < long side: float64 Gram (k x k) padded to 32x32,
//                         ONE syevjBatched for all of them
//   kRouteCudaGram        float64 Gram per shape group (DGEMM), XsyevBatched (or Xsyevd per matrix)
//   kRouteCudaGramPadded32, kRouteCudaGram32
//                         the same two in float32 (SGEMM, Ssyevj / XsyevBatched / Xsyevd on
//                         CUDA_R_32F), for bf16/fp16 outputs; a matrix over its error budget is
//                         redone on the float64 one
//   kRouteCudaJacobi      gesvdj per matrix (float64, economy), spread over several streams
//   kRouteCudaExact       gesvd per matrix (float64, QR-based), spread over several streams

// method= of the operator on CUDA.
enum class Method { Auto, Jacobi, Gram, Svd };

constexpr int64_t kAnySize = std::numeric_limits<int64_t>::max();

// =================================================================================================
// kAutoPlan: the route method="auto" takes, by shape class; the first row whose bounds hold wins
// (short = min(m, n), long = max(m, n) of the flattened weight).
//
// PROVISIONAL. Derived from the cost model below (FLOP counts at H100 peak rates), NOT measured: the machine that
// wrote this has no GPU. Re-measure on an H100 (.ci/gpu_check.sh runs the benchmarks) and
// replace rows and kTuning below with measured crossovers. Reasoning behind the current rows:
//   - short <= 32 and long <= 32: cuSOLVER's gesvdjBatched limit; one launch for all of them,
//     Jacobi accuracy (no squared condition number).
//   - short <= 32 < long: Gram of the short side is at most 32x32, so all of them share ONE
//     syevjBatched launch (the Gram GEMMs are one launch per shape). Matrices whose Gram spectrum
//     exceeds kGramMaxEigenRatio are redone with the exact SVD (same rule as the ATen route).
//   - larger: Gram = 2mk^2 (DGEMM) + ~9k^3 (eigensolver) + 2mk^2 (apply), mostly DGEMM at the
//     FP64 tensor-core rate (67 TFLOP/s on H100 SXM); one-sided Jacobi is ~10 sweeps of ~6mk^2 at
//     the FP64 vector rate (34 TFLOP/s) with many small launches per sweep, so Gram should win by
//     5-10x for every shape. Ill-conditioned matrices are redone with the exact SVD as above
//     (not Jacobi: gesvdj may not converge on a large ill-conditioned float64 matrix, e.g.
//     4096 x 14336, and is slower than gesvd there).
// =================================================================================================
struct PlanRow {
  int64_t max_short;
  int64_t max_long;
  RouteCode route;
};

constexpr PlanRow kAutoPlan[] = {
    {32, 32, kRouteCudaSmall},
    {32, kAnySize, kRouteCudaGramPadded},
    {kAnySize, kAnySize, kRouteCudaGram},
};

struct Tuning {
  // Gram route: Gram matrices up to this side go through one XsyevBatched per shape group;
  // larger ones through Xsyevd per matrix on the side streams. PROVISIONAL (PyTorch's own eigh
  // switches from a syevj loop to syevd at 512 in float32).
  int64_t batched_eigh_max_side;
  // Largest batch of one XsyevBatched call (it is halved further when its workspace does not fit
  // the wave's budget). PROVISIONAL.
  int64_t max_eigh_batch;
  // Streams for the per-matrix routes (Jacobi, Exact, Xsyevd). PROVISIONAL.
  int num_streams;
  // Float64 workspace budget of one wave: matrices are decomposed and reconstructed in waves of
  // at most this many bytes of estimated workspace, so a model does not need ~5x its size in
  // float64 scratch at once. A matrix above it gets a wave of its own. PROVISIONAL.
  int64_t wave_bytes;
  // Largest batch of one gesvdjBatched / syevjBatched call (32x32 float64 each). cuSOLVER sizes
  // the whole batch's workspace as an int count of doubles, so the batch is capped further where
  // that count fits (int_workspace.h). The small route is ONE launch up to
  // this count (tiny-batch: 100k matrices), one per chunk above it.
  int64_t max_small_batch;
};

constexpr Tuning kTuning = {
    /*batched_eigh_max_side=*/1024,
    /*max_eigh_batch=*/4096,
    /*num_streams=*/4,
    /*wave_bytes=*/int64_t{8} << 30,
    /*max_small_batch=*/int64_t{1} << 17,
};

// The route of a (m x n) matrix under `method`, in float64. Whatever the method, a matrix with
// both sides <= 32 joins the one gesvdjBatched launch (float64 Jacobi to machine precision is as
// exact as gesvd, and gesvd redoes any matrix it does not converge on); method= chooses among the
// routes for larger matrices:
//   jacobi: Jacobi per matrix.  gram: Gram (padded when the short side is <= 32), no redo.
//   svd: gesvd per matrix, the exact reference route.  auto: kAutoPlan, with redo (see above).
inline RouteCode plan_float64_route(int64_t m, int64_t n, Method method) {
  const int64_t s = m < n ? m : n;
  const int64_t l = m < n ? n : m;
  if (l <= kSmallDim) return kRouteCudaSmall;
  switch (method) {
    case Method::Svd: return kRouteCudaExact;
    case Method::Jacobi: return kRouteCudaJacobi;
    case Method::Gram: return (s <= kSmallDim) ? kRouteCudaGramPadded : kRouteCudaGram;
    case Method::Auto: break;
  }
  for (const PlanRow& row : kAutoPlan)
    if (s <= row.max_short && l <= row.max_long) return row.route;
  return kRouteCudaGram;
}

// The float32 form of a Gram route, and the float64 form of a float32 one (the route that redoes
// a matrix over its budget); every other route is its own form.
inline RouteCode float32_form(RouteCode r) {
  return r == kRouteCudaGram ? kRouteCudaGram32 : r == kRouteCudaGramPadded ? kRouteCudaGramPadded32 : r;
}
inline RouteCode float64_form(RouteCode r) {
  return r == kRouteCudaGram32 ? kRouteCudaGram : r == kRouteCudaGramPadded32 ? kRouteCudaGramPadded : r;
}

// The first route of a (m x n) matrix: plan_float64_route's, in float32 under method="auto"
// where `float32` (a bf16 or fp16 output: float32_eligible, precision.h) and the route has a
// float32 form. (As on the ATen route: an explicit method= keeps its float64 route.)
inline RouteCode plan_route(int64_t m, int64_t n, Method method, bool float32) {
  const RouteCode route = plan_float64_route(m, n, method);
  return float32 && method == Method::Auto ? float32_form(route) : route;
}

}  // namespace cuda
}  // namespace svs
