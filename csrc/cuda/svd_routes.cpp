// kRouteCudaSmall (one gesvdjBatched for every matrix with both sides <= 32) and the per-matrix
// SVD routes kRouteCudaJacobi (gesvdj) and kRouteCudaExact (gesvd), spread over side streams.
#include "handles.h"
#include "int_workspace.h"
#include "wave.h"

#include <climits>
#include <string>

namespace svs {
namespace cuda {
void Wave::run_batched_jacobi(int64_t batch, const char* name, at::ScalarType work_type,
                              const JacobiSize& size, const JacobiRun& run) {
  SolverHandle handle(device_.index(), stream());
  const std::string sizing = std::string("sizing the ") + name + " workspace";
  const std::string running = std::string("running ") + name;
  auto lwork_of = [&](int count) {
    int lwork = 0;
    check(size(handle, count, &lwork), sizing.c_str());
    return lwork;
  };
  const int64_t chunk = int_workspace_batch(lwork_of, std::min(batch, kTuning.max_small_batch));
  const int lwork = lwork_of(static_cast<int>(chunk));
  at::Tensor work = at::empty({std::max(lwork, 1)}, at::TensorOptions().dtype(work_type).device(device_));
  keep_alive_.push_back(work);
  for (int64_t b0 = 0; b0 < batch; b0 += chunk) {
    const int count = static_cast<int>(std::min(chunk, batch - b0));
    check(run(handle, b0, count, work.data_ptr(), lwork), running.c_str());
  }
}

void Wave::run_small(const std::vector<int>& ids, int* info) {
  constexpr int64_t D = kSmallDim, DD = D * D;
  const int64_t batch = static_cast<int64_t>(ids.size());
  const int A = add_buffer(batch * DD), S = add_buffer(batch * D), U = add_buffer(batch * DD),
            V = add_buffer(batch * DD);
  std::vector<PackTarget> targets;
  for (int64_t b = 0; b < batch; ++b) targets.push_back({ptr(A) + b * DD, 1, D, D, D});  // column-major
  pack(ids, targets);

  run_batched_jacobi(
      batch, "gesvdjBatched", at::kDouble,
      [&](cusolverDnHandle_t h, int count, int* lwork) {
        return small_svd_workspace(h, ptr(A), ptr(S), ptr(U), ptr(V), count, lwork);
      },
      [&](cusolverDnHandle_t h, int64_t b0, int count, void* work, int lwork) {
        return small_svd(h, ptr(A) + b0 * DD, ptr(S) + b0 * D, ptr(U) + b0 * DD, ptr(V) + b0 * DD,
                         static_cast<double*>(work), lwork, info + b0, count);
      });

  // Column-major U (32x32): U[:m, :k] has strides (1, 32). Column-major V: Vh = V^T [:k, :n] has
  // strides (32, 1). S is sorted descending, so its first k entries are the spectrum of M (the
  // padding only adds zero singular values).
  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    set_svd_factors(ids[b], kRouteCudaSmall, view(U, b * DD, {a.m, a.k()}, {1, D}), view(S, b * D, {a.k()}, {1}),
                    view(V, b * DD, {a.k(), a.n}, {D, 1}));
  }
}

// X is the tall column-major form of M: X = M (rows m, ld m) when m > n, else X = M^T (rows n,
// ld n; that is the row-major M itself). X = Ux diag(S) Vx^T (Jacobi) or Ux diag(S) VTx (exact);
// Ux: rows x k (ld rows), Vx / VTx: k x k (ld k).
void Wave::run_per_matrix_svd(const std::vector<int>& ids, int* info, bool exact) {
  const int64_t batch = static_cast<int64_t>(ids.size());
  std::vector<int64_t> xoff(batch + 1, 0), soff(batch + 1, 0), voff(batch + 1, 0);
  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    TORCH_CHECK(a.rows() <= INT_MAX, "svs.refine (CUDA): weights[", a.index, "] has ", a.rows(),
                " rows or columns; cuSOLVER's SVD takes at most ", INT_MAX);
    xoff[b + 1] = xoff[b] + a.m * a.n;
    soff[b + 1] = soff[b] + a.k();
    voff[b + 1] = voff[b] + a.k() * a.k();
  }
  const int X = add_buffer(xoff[batch]), S = add_buffer(soff[batch]), U = add_buffer(xoff[batch]),
            V = add_buffer(voff[batch]);
  std::vector<PackTarget> targets;
  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    if (a.m > a.n) targets.push_back({ptr(X) + xoff[b], 1, a.m, a.m, a.n});
    else targets.push_back({ptr(X) + xoff[b], a.n, 1, a.m, a.n});
  }
  pack(ids, targets);

  // Everything is sized and allocated before the fork (allocation is ordered on the current stream).
  std::vector<double> cost;
  for (int64_t b = 0; b < batch; ++b)
    cost.push_back(static_cast<double>(mat(ids[b]).rows()) * mat(ids[b]).k() * mat(ids[b]).k());
  Fanout fan(device_.index(), kTuning.num_streams);
  const std::vector<int> slot = fan.assign(cost);
  std::vector<int> lwork_need(fan.size(), 1);
  std::vector<int64_t> rwork_need(fan.size(), 1);
  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    const int rows = static_cast<int>(a.rows()), cols = static_cast<int>(a.k());
    int lwork = 0;
    if (exact)
      check(exact_svd_workspace(fan.handle(slot[b]), rows, cols, &lwork), "sizing the gesvd workspace");
    else
      check(jacobi_svd_workspace(fan.handle(slot[b]), ptr(X) + xoff[b], rows, cols, ptr(S) + soff[b],
                                 ptr(U) + xoff[b], ptr(V) + voff[b], &lwork),
            "sizing the gesvdj workspace");
    lwork_need[slot[b]] = std::max(lwork_need[slot[b]], lwork);
    rwork_need[slot[b]] = std::max(rwork_need[slot[b]], a.k());
  }
  std::vector<at::Tensor> work, rwork;
  for (int s = 0; s < fan.size(); ++s) {
    work.push_back(at::empty({lwork_need[s]}, buffers_[X].options()));
    rwork.push_back(at::empty({rwork_need[s]}, buffers_[X].options()));
    keep_alive_.push_back(work.back());
    keep_alive_.push_back(rwork.back());
  }
  fan.fork();
  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    const int rows = static_cast<int>(a.rows()), cols = static_cast<int>(a.k());
    const int s = slot[b];
    if (exact)
      check(exact_svd(fan.handle(s), ptr(X) + xoff[b], rows, cols, ptr(S) + soff[b], ptr(U) + xoff[b],
                      ptr(V) + voff[b], work[s].data_ptr<double>(), lwork_need[s],
                      rwork[s].data_ptr<double>(), info + b),
            "running gesvd");
    else
      check(jacobi_svd(fan.handle(s), ptr(X) + xoff[b], rows, cols, ptr(S) + soff[b], ptr(U) + xoff[b],
                       ptr(V) + voff[b], work[s].data_ptr<double>(), lwork_need[s], info + b),
            "running gesvdj");
  }

  const RouteCode route = exact ? kRouteCudaExact : kRouteCudaJacobi;
  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    const int64_t k = a.k();
    const View s = view(S, soff[b], {k}, {1});
    if (a.m > a.n)  // X = M: U = Ux; Vh = Vx^T (Jacobi) or VTx (exact)
      set_svd_factors(ids[b], route, view(U, xoff[b], {a.m, k}, {1, a.m}), s,
                      exact ? view(V, voff[b], {k, a.n}, {1, k}) : view(V, voff[b], {k, a.n}, {k, 1}));
    else  // X = M^T: U = Vx (Jacobi) or VTx^T (exact); Vh = Ux^T
      set_svd_factors(ids[b], route, exact ? view(V, voff[b], {a.m, k}, {k, 1}) : view(V, voff[b], {a.m, k}, {1, k}),
                      s, view(U, xoff[b], {k, a.n}, {a.n, 1}));
  }
}

}  // namespace cuda
}  // namespace svs
