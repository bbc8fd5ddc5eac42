// kRouteCudaGram and kRouteCudaGramPadded: one pipeline. For wide M (m <= n): G = M M^T = Q L Q^T,
// U = Q, Vh = diag(1/s) Q^T M. For tall M: G = M^T M, Vh = Q^T, U = M Q diag(1/s). s = sqrt(l).
//
// Matrix b's Gram matrix is ld x ld (column-major) at G + goff[b], its eigenvalues at W + woff[b]:
//   padded (k <= 32): ld = 32, G zero-filled, ONE syevjBatched for every such matrix; the padding
//                     adds zero eigenvalues only, and eigenvalues come back ascending, so the
//                     spectrum of the k x k Gram is in the last k slots (offset ld - k);
//   unpadded:         ld = k, one XsyevBatched per shape group (or Xsyevd per matrix on the side
//                     streams above kTuning.batched_eigh_max_side).
// In float64 (T = double) for every output dtype; in float32 (T = float: SGEMM, Ssyevj /
// XsyevBatched / Xsyevd on CUDA_R_32F) for bf16/fp16 outputs (planner.h), where each matrix is
// then checked against its error budget (precision.h) and flagged for the float64 route if over.
// The eigenvalues go to float64 for the threshold, the inverse singular values and the spectrum.
#include "handles.h"
#include "precision.h"
#include "wave.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <type_traits>

namespace svs {
namespace cuda {
namespace {

// Runs of consecutive positions with the same (m, n), and the same dtype if `by_dtype` (ids are
// sorted by shape and dtype beforehand): (first position, count).
std::vector<std::pair<int64_t, int64_t>> shape_runs(const std::vector<int>& ids,
                                                    const std::vector<const Mat*>& mats,
                                                    bool by_dtype = false) {
  std::vector<std::pair<int64_t, int64_t>> runs;
  for (int64_t p = 0; p < static_cast<int64_t>(ids.size()); ++p) {
    const Mat& a = *mats[ids[p]];
    if (!runs.empty()) {
      const Mat& first = *mats[ids[runs.back().first]];
      if (first.m == a.m && first.n == a.n && (!by_dtype || first.dtype == a.dtype)) {
        ++runs.back().second;
        continue;
      }
    }
    runs.push_back({p, 1});
  }
  return runs;
}

}  // namespace

template <typename T>
void Wave::run_gram(const std::vector<int>& ids, int* info, int* ill, bool padded) {
  constexpr bool f32 = std::is_same<T, float>::value;
  const at::ScalarType type = f32 ? at::kFloat : at::kDouble;
  const int64_t batch = static_cast<int64_t>(ids.size());
  std::vector<int64_t> ld(batch), top(batch), moff(batch + 1, 0), goff(batch + 1, 0), woff(batch + 1, 0);
  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    ld[b] = padded ? kSmallDim : a.k();
    top[b] = ld[b] - a.k();
    moff[b + 1] = moff[b] + a.m * a.n;
    goff[b + 1] = goff[b] + ld[b] * ld[b];
    woff[b + 1] = woff[b] + ld[b];
  }
  // M, G, W, P in precision T; S (the eigenvalues, then the singular values) and I (their
  // inverses) in float64 (S is W itself in float64).
  const int M = add_buffer(moff[batch], false, type), G = add_buffer(goff[batch], /*zero=*/padded, type),
            W = add_buffer(woff[batch], false, type), I = add_buffer(woff[batch]),
            P = add_buffer(moff[batch], false, type);
  std::vector<PackTarget> targets;
  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    targets.push_back({data<T>(M) + moff[b], a.n, 1, a.m, a.n, f32});  // row-major
  }
  pack(ids, targets);

  BlasHandle blas(device_.index(), stream());
  const auto runs = shape_runs(ids, mats_);
  // Each matrix times 2^-k (max |a_ij| in [1/2, 1)), as LAPACK's SVD scales, so that its Gram
  // matrix neither underflows nor overflows (float64 near 1e-200 / 1e+200). U and Vh do not change;
  // the singular values are unscaled after the inverse scaling below.
  std::vector<at::Tensor> exps;
  for (const auto& [p0, count] : runs) {
    const Mat& a = mat(ids[p0]);
    at::Tensor m = buffers_[M].narrow(0, moff[p0], count * a.m * a.n).view({count, a.m * a.n});
    exps.push_back(std::get<1>(at::frexp(m.abs().amax({1}, /*keepdim=*/true))).to(at::kLong));
    m.copy_(times_pow2(m, -exps.back()));
  }
  for (const auto& [p0, count] : runs) {
    const Mat& a = mat(ids[p0]);
    check(gram(blas, data<T>(M) + moff[p0], a.m, a.n, count, data<T>(G) + goff[p0], ld[p0], ld[p0] * ld[p0]),
          f32 ? "forming the Gram matrices (SGEMM)" : "forming the Gram matrices (DGEMM)");
  }
  if (padded) solve_padded_eigen<T>(batch, G, W, info);
  else solve_gram_eigen<T>(ids, goff, woff, G, W, info);
  int S = W;
  if (f32) {
    flag_over_budget(ids, ld, woff, W, at::cat(exps), ill);
    S = add_buffer(woff[batch]);
    buffers_[S].copy_(buffers_[W]);
  }

  std::vector<SegmentDesc> seg;
  std::vector<int64_t> inv_off(batch);  // the top k inverse singular values of each matrix
  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    inv_off[b] = woff[b] + top[b];
    SegmentDesc d{};
    d.values = ptr(S) + inv_off[b];
    d.inv = ptr(I) + inv_off[b];
    // float32: the error budget flagged it already; float64 under "auto": the Gram accuracy range
    d.ill = (!f32 && method_ == Method::Auto) ? ill + b : nullptr;
    d.k = a.k();
    // float32 too: a matrix within its budget has every eigenvalue far above this tolerance
    // (precision.h's floor), and one that is not is redone in float64.
    d.rel_tol = gram_rank_tolerance(a.m, a.n);
    d.eigen = 1;
    seg.push_back(d);
  }
  threshold(seg);

  for (const auto& [p0, count] : runs) {
    const Mat& a = mat(ids[p0]);
    const int64_t q = goff[p0] + top[p0] * ld[p0];  // first of the top-k eigenvector columns
    check(gram_apply(blas, data<T>(M) + moff[p0], a.m, a.n, count, data<T>(G) + q, ld[p0], ld[p0] * ld[p0],
                     data<T>(P) + moff[p0]),
          f32 ? "applying the eigenvectors (SGEMM)" : "applying the eigenvectors (DGEMM)");
  }
  scale_by_inverse_sigma(ids, P, moff, I, inv_off);
  for (size_t r = 0; r < runs.size(); ++r) {
    const auto& [p0, count] = runs[r];
    at::Tensor w = buffers_[S].narrow(0, woff[p0], count * ld[p0]).view({count, ld[p0]});
    w.copy_(times_pow2(w, exps[r]));
  }

  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    const int64_t k = a.k(), q = goff[b] + top[b] * ld[b];
    Factors& f = factors_[ids[b]];
    const RouteCode route = padded ? kRouteCudaGramPadded : kRouteCudaGram;
    f.route = f32 ? float32_form(route) : route;
    f.ascending = true;
    f.s = view(S, inv_off[b], {k}, {1});
    if (a.m <= a.n) {
      f.u = view(G, q, {a.m, k}, {1, ld[b]});       // Q (column-major)
      f.vh = view(P, moff[b], {k, a.n}, {a.n, 1});  // diag(1/s) Q^T M
    } else {
      f.u = view(P, moff[b], {a.m, k}, {k, 1});     // M Q diag(1/s)
      f.vh = view(G, q, {k, a.n}, {ld[b], 1});      // Q^T
    }
    f.needs_threshold = false;
  }
}

// Float32 routes: the budget of each (shape, dtype) run in one device computation; no host sync.
// The bound takes the eigenvalues of the weight itself (a map such as log1p is not scale-free):
// those of the scaled matrix times 4^exps.
void Wave::flag_over_budget(const std::vector<int>& ids, const std::vector<int64_t>& ld,
                            const std::vector<int64_t>& woff, int W, const at::Tensor& exps, int* ill) {
  const auto flags = at::TensorOptions().dtype(at::kInt).device(device_);
  for (const auto& [p0, count] : shape_runs(ids, mats_, /*by_dtype=*/true)) {
    const Mat& a = mat(ids[p0]);
    const at::Tensor scaled =
        buffers_[W].narrow(0, woff[p0], count * ld[p0]).view({count, ld[p0]}).narrow(1, ld[p0] - a.k(), a.k());
    const at::Tensor l = times_pow2(scaled, 2 * exps.narrow(0, p0, count));
    const at::Tensor within = gram32_within_budget(l, map_, a.dtype);
    at::from_blob(ill + p0, {count}, flags).copy_(within.logical_not());
  }
}

// Every padded 32x32 Gram matrix in one syevjBatched (per chunk whose int workspace fits).
template <typename T>
void Wave::solve_padded_eigen(int64_t batch, int G, int W, int* info) {
  constexpr int64_t D = kSmallDim, DD = D * D;
  run_batched_jacobi(
      batch, "syevjBatched", std::is_same<T, float>::value ? at::kFloat : at::kDouble,
      [&](cusolverDnHandle_t h, int count, int* lwork) {
        return small_eigh_workspace(h, data<T>(G), data<T>(W), count, lwork);
      },
      [&](cusolverDnHandle_t h, int64_t b0, int count, void* work, int lwork) {
        return small_eigh(h, data<T>(G) + b0 * DD, data<T>(W) + b0 * D, static_cast<T*>(work), lwork, info + b0,
                          count);
      });
}

// Unpadded Gram matrices: one XsyevBatched per shape group, in chunks of at most
// kTuning.max_eigh_batch matrices and n * n * batch <= INT32_MAX (cuSOLVER's limit), halved while
// the queried workspace exceeds the wave's slack, when the query answers INVALID_VALUE, or when
// the workspace cannot be allocated; Xsyevd per matrix on the side streams for Gram matrices above
// kTuning.batched_eigh_max_side.
template <typename T>
void Wave::solve_gram_eigen(const std::vector<int>& ids, const std::vector<int64_t>& goff,
                            const std::vector<int64_t>& woff, int G, int W, int* info) {
  SolverHandle handle(device_.index(), stream());
  std::vector<int64_t> one_by_one;  // positions
  for (const auto& [p0, count] : shape_runs(ids, mats_)) {
    const int64_t k = mat(ids[p0]).k();
    if (k > kTuning.batched_eigh_max_side) {
      for (int64_t p = p0; p < p0 + count; ++p) one_by_one.push_back(p);
      continue;
    }
    int64_t chunk = std::max<int64_t>(1, std::min({count, kTuning.max_eigh_batch, INT32_MAX / (k * k)}));
    size_t dev_bytes = 0, host_bytes = 0;
    at::Tensor dev_work;
    for (;;) {
      const Status st = eigh_batched_workspace(handle, data<T>(G) + goff[p0], k, data<T>(W) + woff[p0], chunk,
                                               &dev_bytes, &host_bytes);
      if (chunk > 1 && !st.ok() && st.code == CUSOLVER_STATUS_INVALID_VALUE) { chunk /= 2; continue; }
      check(st, "sizing the XsyevBatched workspace");
      if (chunk > 1 && static_cast<int64_t>(dev_bytes) > slack_) { chunk /= 2; continue; }
      try {
        dev_work = device_bytes(dev_bytes);
      } catch (const c10::OutOfMemoryError&) {
        if (chunk == 1) throw;
        chunk /= 2;
        continue;
      }
      break;
    }
    keep_alive_.push_back(dev_work);
    host_work_.emplace_back(std::max<size_t>(host_bytes, 1));
    for (int64_t c0 = p0; c0 < p0 + count; c0 += chunk) {
      const int64_t c = std::min(chunk, p0 + count - c0);
      check(eigh_batched(handle, data<T>(G) + goff[c0], k, data<T>(W) + woff[c0], dev_work.data_ptr(), dev_bytes,
                         host_work_.back().data(), host_bytes, info + c0, c),
            "running XsyevBatched");
    }
  }
  if (one_by_one.empty()) return;

  // Workspaces are sized and allocated before the fork (allocation is ordered on the current
  // stream); the Gram matrices were formed on it before the fork too.
  Fanout fan(device_.index(), kTuning.num_streams);
  std::vector<double> cost;
  for (int64_t p : one_by_one) cost.push_back(std::pow(static_cast<double>(mat(ids[p]).k()), 3));
  const std::vector<int> slot = fan.assign(cost);
  std::vector<size_t> dev_need(fan.size(), 1), host_need(fan.size(), 1);
  for (size_t j = 0; j < one_by_one.size(); ++j) {
    const int64_t p = one_by_one[j];
    size_t dev_bytes = 0, host_bytes = 0;
    check(eigh_workspace(fan.handle(slot[j]), data<T>(G) + goff[p], mat(ids[p]).k(), data<T>(W) + woff[p],
                         &dev_bytes, &host_bytes),
          "sizing the Xsyevd workspace");
    dev_need[slot[j]] = std::max(dev_need[slot[j]], dev_bytes);
    host_need[slot[j]] = std::max(host_need[slot[j]], host_bytes);
  }
  std::vector<at::Tensor> dev_work;
  std::vector<size_t> host_index;
  for (int s = 0; s < fan.size(); ++s) {
    dev_work.push_back(device_bytes(dev_need[s]));
    keep_alive_.push_back(dev_work.back());
    host_work_.emplace_back(host_need[s]);
    host_index.push_back(host_work_.size() - 1);
  }
  fan.fork();
  for (size_t j = 0; j < one_by_one.size(); ++j) {
    const int64_t p = one_by_one[j];
    const int s = slot[j];
    check(eigh(fan.handle(s), data<T>(G) + goff[p], mat(ids[p]).k(), data<T>(W) + woff[p], dev_work[s].data_ptr(),
               dev_need[s], host_work_[host_index[s]].data(), host_need[s], info + p),
          "running Xsyevd");
  }
}

template void Wave::run_gram<double>(const std::vector<int>&, int*, int*, bool);
template void Wave::run_gram<float>(const std::vector<int>&, int*, int*, bool);

}  // namespace cuda
}  // namespace svs
