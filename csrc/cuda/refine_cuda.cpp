// CUDA kernel of svs::refine: the torch binding. It plans (planner.h), allocates (PyTorch caching
// allocator only), takes ATen's cuSOLVER/cuBLAS handles on the current stream, launches the
// torch-free device code of svs_cuda.cu, and hands every factorisation to svs::_reconstruct.
//
// Flow of one call (a model's weights are split into waves only when their float64 workspace
// would exceed kTuning.wave_bytes; a typical model is one wave):
//   1. check_inputs / parse_map / method. (check_inputs syncs once per tensor for its NaN/Inf test.)
//   2. plan: a route per matrix (planner.h).
//   3. phase loop: every route of the phase is enqueued (batched routes: one launch for all their
//      matrices; per-matrix routes: spread over side streams, joined back into the current
//      stream); every route writes one `info` (and, for the Gram routes under "auto", one
//      ill-conditioned flag) per matrix into a single device status buffer, copied to the host
//      ONCE per phase: the only host synchronisation of the kernel. Matrices whose solver did not
//      converge are redone by Route::Exact (gesvd) in the next phase, Gram matrices outside
//      the Gram route's accuracy range by Route::Jacobi; a failing gesvd raises. Usual case: one
//      phase, one sync; with a redo: two or three.
//   4. one threshold launch: singular values <= rank_tolerance(m, n, float64) * s_max become 0.
//   5. factors converted to float32 (float64 for float64 inputs), one conversion per buffer.
//   6. svs::_reconstruct (through the dispatcher) writes every output.
//   7. one launch scales every bias (svs::scale_bias's rule).
#include "planner.h"
#include "refine.h"
#include "svs_cuda.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <type_traits>

namespace svs {
namespace {

namespace sc = svs::cuda;
using sc::Method;
using sc::Route;

void check(const sc::Status& st, const char* while_doing) {
  TORCH_CHECK(st.ok(), "svs.refine (CUDA): ", st.call, " failed with status ", st.code, " while ",
              while_doing);
}

// ---- inputs ---------------------------------------------------------------------------------------
struct Mat {
  int64_t index;    // position in `weights`
  int64_t m, n;     // flattened shape
  at::Tensor src;   // (m, n) view of the weight (a copy when reshape has to copy)
  int32_t src_type; // sc::SourceType
  bool f64;         // float64 input: reconstruct in float64
  int64_t k() const { return std::min(m, n); }
  int64_t rows() const { return std::max(m, n); }
};

bool source_type(at::ScalarType t, int32_t* out) {
  switch (t) {
    case at::kFloat: *out = sc::kSourceF32; return true;
    case at::kDouble: *out = sc::kSourceF64; return true;
    case at::kHalf: *out = sc::kSourceF16; return true;
    case at::kBFloat16: *out = sc::kSourceBF16; return true;
    default: return false;
  }
}

// ---- device uploads -------------------------------------------------------------------------------
// Host vector -> pinned host tensor -> device, asynchronously on the current stream (the caching
// host allocator keeps the pinned block until the copy is done).
template <typename T>
at::Tensor upload(const std::vector<T>& host, const at::Device& device) {
  static_assert(std::is_trivially_copyable<T>::value, "descriptors must be trivially copyable");
  const int64_t bytes = static_cast<int64_t>(host.size() * sizeof(T));
  at::Tensor pinned = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(pinned.data_ptr(), host.data(), static_cast<size_t>(bytes));
  return pinned.to(at::TensorOptions().device(device), /*non_blocking=*/true);
}

template <typename T>
const T* device_ptr(const at::Tensor& bytes) {
  return reinterpret_cast<const T*>(bytes.data_ptr());
}

// ---- side streams for the per-matrix routes ---------------------------------------------------------
// One cuSOLVER handle per side stream (a handle must not be shared by calls in flight on several
// streams). Created once per device and kept for the life of the process, like ATen's handle pool.
struct SidePool {
  std::mutex mutex;  // one call at a time uses the side streams of a device
  std::vector<c10::cuda::CUDAStream> streams;
  std::vector<cusolverDnHandle_t> handles;
};

SidePool& side_pool(c10::DeviceIndex device) {
  static std::mutex registry_mutex;
  static std::map<c10::DeviceIndex, std::unique_ptr<SidePool>> pools;
  std::lock_guard<std::mutex> lock(registry_mutex);
  std::unique_ptr<SidePool>& pool = pools[device];
  if (!pool) {
    auto fresh = std::make_unique<SidePool>();
    for (int i = 0; i < sc::kTuning.num_streams; ++i) {
      fresh->streams.push_back(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device));
      cusolverDnHandle_t handle = nullptr;
      TORCH_CHECK(cusolverDnCreate(&handle) == CUSOLVER_STATUS_SUCCESS,
                  "svs.refine (CUDA): cusolverDnCreate failed");
      TORCH_CHECK(cusolverDnSetStream(handle, fresh->streams.back().stream()) ==
                      CUSOLVER_STATUS_SUCCESS,
                  "svs.refine (CUDA): cusolverDnSetStream failed");
      fresh->handles.push_back(handle);
    }
    pool = std::move(fresh);
  }
  return *pool;
}

// Holds the side streams of a device for one route. fork(): every side stream waits for the work
// enqueued so far on the current stream (packing; allocations, which the caching allocator orders
// on the current stream). Join (destructor, also when an exception unwinds): the current stream
// waits for every side stream, so buffers freed afterwards are reused only after the side work.
class Fanout {
 public:
  explicit Fanout(c10::DeviceIndex device)
      : pool_(side_pool(device)), lock_(pool_.mutex),
        current_(c10::cuda::getCurrentCUDAStream(device)) {}
  void fork() {
    at::cuda::CUDAEvent event;
    event.record(current_);
    for (const auto& s : pool_.streams) event.block(s);
    forked_ = true;
  }
  ~Fanout() {
    if (!forked_) return;
    try {
      for (const auto& s : pool_.streams) {
        at::cuda::CUDAEvent done;
        done.record(s);
        done.block(current_);
      }
    } catch (...) {
      // A failing event record means the context is broken; nothing sensible is left to do.
    }
  }
  int size() const { return static_cast<int>(pool_.streams.size()); }
  cusolverDnHandle_t handle(int i) const { return pool_.handles[i]; }

 private:
  SidePool& pool_;
  std::lock_guard<std::mutex> lock_;
  c10::cuda::CUDAStream current_;
  bool forked_ = false;
};

// Greedy longest-first assignment of items to `slots` by cost.
std::vector<int> assign_slots(const std::vector<double>& cost, int slots) {
  std::vector<int> order(cost.size()), slot(cost.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return cost[a] > cost[b]; });
  std::vector<double> load(slots, 0.0);
  for (int i : order) {
    const int s = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    slot[i] = s;
    load[s] += cost[i];
  }
  return slot;
}

// ---- factors ------------------------------------------------------------------------------------------
// A strided view into one of the wave's flat float64 buffers.
struct View {
  int buffer = -1;
  int64_t offset = 0;
  std::vector<int64_t> sizes, strides;
};

struct Factors {
  View u, s, vh;             // out = U diag(f(s)) Vh
  double rel_tol = 0.0;      // rank tolerance relative to s_max (SVD routes)
  bool needs_threshold = false;  // s is raw (SVD routes); the Gram routes threshold themselves
};

View view(int buffer, int64_t offset, std::vector<int64_t> sizes, std::vector<int64_t> strides) {
  return View{buffer, offset, std::move(sizes), std::move(strides)};
}

double svd_rel_tol(const Mat& a) { return rank_tolerance(a.m, a.n, at::kDouble); }
// Eigenvalue noise is ~max(m, n) * eps64 * l_max, so singular value noise is its square root
// (the CPU kernel's Gram rule).
double gram_rel_tol(const Mat& a) { return std::sqrt(rank_tolerance(a.m, a.n, at::kDouble)); }

class Wave {
 public:
  Wave(std::vector<const Mat*> mats, Method method, const at::Device& device)
      : mats_(std::move(mats)), method_(method), device_(device), factors_(mats_.size()) {}

  void run(const std::string& map, std::vector<at::Tensor>& outputs);

 private:
  const Mat& mat(int i) const { return *mats_[i]; }
  cudaStream_t stream() const { return c10::cuda::getCurrentCUDAStream(device_.index()).stream(); }
  int add_buffer(int64_t numel, bool zero = false) {
    const auto opts = at::TensorOptions().dtype(at::kDouble).device(device_);
    buffers_.push_back(zero ? at::zeros({std::max<int64_t>(numel, 1)}, opts)
                            : at::empty({std::max<int64_t>(numel, 1)}, opts));
    return static_cast<int>(buffers_.size()) - 1;
  }
  double* ptr(int buffer) { return buffers_[buffer].data_ptr<double>(); }
  void pack(std::vector<sc::PackDesc>& desc);
  sc::PackDesc pack_desc(const Mat& a, double* dst, int64_t stride_r, int64_t stride_c,
                         int64_t dst_rows, int64_t dst_cols) const;

  void run_route(Route route, const std::vector<int>& ids, int* info, int* ill);
  void run_small(const std::vector<int>& ids, int* info);
  void run_gram_padded(const std::vector<int>& ids, int* info, int* ill);
  void run_gram(const std::vector<int>& ids, int* info, int* ill);
  void run_per_matrix_svd(const std::vector<int>& ids, int* info, bool exact);
  void threshold_svd_factors();
  // Scales each product P_b = M_b Q_b (rows or columns, whichever is the short side) by its
  // inverse singular values buffer(inv)[inv_off[b] ...], for all matrices in one launch.
  void scale_by_inverse_sigma(const std::vector<int>& ids, int products, const std::vector<int64_t>& moff,
                              int inv, const std::vector<int64_t>& inv_off);
  at::Tensor materialise(const View& v, bool f64);

  std::vector<const Mat*> mats_;
  Method method_;
  at::Device device_;
  std::vector<Factors> factors_;
  std::vector<at::Tensor> buffers_;               // flat float64 device buffers
  std::map<int, at::Tensor> float_buffers_;        // float32 copies, made on demand
  std::vector<std::vector<char>> host_work_;      // cuSOLVER host workspaces, kept for the wave
  std::vector<at::Tensor> keep_alive_;            // device descriptors and workspaces
};

sc::PackDesc Wave::pack_desc(const Mat& a, double* dst, int64_t stride_r, int64_t stride_c,
                             int64_t dst_rows, int64_t dst_cols) const {
  sc::PackDesc d{};
  d.src = a.src.data_ptr();
  d.dst = dst;
  d.src_stride_r = a.src.stride(0);
  d.src_stride_c = a.src.stride(1);
  d.dst_stride_r = stride_r;
  d.dst_stride_c = stride_c;
  d.rows = a.m;
  d.cols = a.n;
  d.dst_rows = dst_rows;
  d.dst_cols = dst_cols;
  d.src_type = a.src_type;
  return d;
}

// One launch converts (and zero-pads, transposes) every listed matrix into float64 scratch.
void Wave::pack(std::vector<sc::PackDesc>& desc) {
  int64_t total = 0;
  for (auto& d : desc) {
    d.begin = total;
    total += d.dst_rows * d.dst_cols;
  }
  at::Tensor dev = upload(desc, device_);
  keep_alive_.push_back(dev);
  check(sc::pack(device_ptr<sc::PackDesc>(dev), static_cast<int64_t>(desc.size()), total, stream()),
        "packing the weights into float64 scratch");
}

void Wave::run_route(Route route, const std::vector<int>& ids, int* info, int* ill) {
  switch (route) {
    case Route::Small: return run_small(ids, info);
    case Route::GramPadded: return run_gram_padded(ids, info, ill);
    case Route::Gram: return run_gram(ids, info, ill);
    case Route::Jacobi: return run_per_matrix_svd(ids, info, /*exact=*/false);
    case Route::Exact: return run_per_matrix_svd(ids, info, /*exact=*/true);
  }
}

// ---- Route::Small: zero-pad to 32x32 (column-major), one gesvdjBatched ------------------------------
void Wave::run_small(const std::vector<int>& ids, int* info) {
  constexpr int64_t D = sc::kSmallDim, DD = D * D;
  const int64_t batch = static_cast<int64_t>(ids.size());
  const int A = add_buffer(batch * DD), S = add_buffer(batch * D), U = add_buffer(batch * DD),
            V = add_buffer(batch * DD);
  std::vector<sc::PackDesc> desc;
  desc.reserve(ids.size());
  for (int64_t b = 0; b < batch; ++b)
    desc.push_back(pack_desc(mat(ids[b]), ptr(A) + b * DD, /*stride_r=*/1, /*stride_c=*/D, D, D));
  pack(desc);

  cusolverDnHandle_t handle = at::cuda::getCurrentCUDASolverDnHandle();
  const int64_t chunk = std::min<int64_t>(batch, sc::kTuning.max_small_batch);
  int lwork = 0;
  check(sc::small_svd_workspace(handle, ptr(A), ptr(S), ptr(U), ptr(V), static_cast<int>(chunk),
                                &lwork),
        "sizing the gesvdjBatched workspace");
  TORCH_CHECK(lwork >= 0, "svs.refine (CUDA): gesvdjBatched workspace size overflows int");
  at::Tensor work = at::empty({std::max(lwork, 1)}, buffers_[A].options());
  for (int64_t b0 = 0; b0 < batch; b0 += chunk) {
    const int count = static_cast<int>(std::min(chunk, batch - b0));
    check(sc::small_svd(handle, ptr(A) + b0 * DD, ptr(S) + b0 * D, ptr(U) + b0 * DD,
                        ptr(V) + b0 * DD, work.data_ptr<double>(), lwork, info + b0, count),
          "running gesvdjBatched");
  }
  keep_alive_.push_back(work);

  // Column-major U (32x32): U[:m, :k] has strides (1, 32). Column-major V: Vh = V^T [:k, :n] has
  // strides (32, 1). S is sorted descending, so its first k entries are the spectrum of M (the
  // padding only adds zero singular values).
  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    Factors& f = factors_[ids[b]];
    f.u = view(U, b * DD, {a.m, a.k()}, {1, D});
    f.s = view(S, b * D, {a.k()}, {1});
    f.vh = view(V, b * DD, {a.k(), a.n}, {D, 1});
    f.rel_tol = svd_rel_tol(a);
    f.needs_threshold = true;
  }
}

// Groups of consecutive ids with the same (m, n) (ids are sorted by shape beforehand).
std::vector<std::pair<int64_t, int64_t>> shape_runs(const std::vector<int>& ids,
                                                    const std::vector<const Mat*>& mats) {
  std::vector<std::pair<int64_t, int64_t>> runs;  // (first position, count)
  for (int64_t p = 0; p < static_cast<int64_t>(ids.size()); ++p) {
    const Mat& a = *mats[ids[p]];
    if (!runs.empty()) {
      const Mat& first = *mats[ids[runs.back().first]];
      if (first.m == a.m && first.n == a.n) {
        ++runs.back().second;
        continue;
      }
    }
    runs.push_back({p, 1});
  }
  return runs;
}

// ---- Route::GramPadded: Gram of the short side (k <= 32), zero-padded to 32x32, one syevjBatched ----
// For wide M (m <= n): G = M M^T = Q L Q^T, U = Q, Vh = diag(1/s) Q^T M. For tall M: G = M^T M,
// Vh = Q^T, U = M Q diag(1/s). s = sqrt(l); the padding adds zero eigenvalues only, and the
// eigenvalues come back ascending, so the spectrum of G is in the last k slots.
void Wave::run_gram_padded(const std::vector<int>& ids, int* info, int* ill) {
  constexpr int64_t D = sc::kSmallDim, DD = D * D;
  const int64_t batch = static_cast<int64_t>(ids.size());
  std::vector<int64_t> moff(batch + 1, 0);
  for (int64_t b = 0; b < batch; ++b) moff[b + 1] = moff[b] + mat(ids[b]).m * mat(ids[b]).n;
  const int M = add_buffer(moff[batch]), G = add_buffer(batch * DD, /*zero=*/true),
            W = add_buffer(batch * D), I = add_buffer(batch * D), P = add_buffer(moff[batch]);

  std::vector<sc::PackDesc> desc;
  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    desc.push_back(pack_desc(a, ptr(M) + moff[b], /*stride_r=*/a.n, /*stride_c=*/1, a.m, a.n));
  }
  pack(desc);

  cublasHandle_t blas = at::cuda::getCurrentCUDABlasHandle();
  const auto runs = shape_runs(ids, mats_);
  for (const auto& [p0, count] : runs) {
    const Mat& a = mat(ids[p0]);
    check(sc::gram(blas, ptr(M) + moff[p0], a.m, a.n, count, ptr(G) + p0 * DD, D, DD),
          "forming the Gram matrices (DGEMM)");
  }

  cusolverDnHandle_t handle = at::cuda::getCurrentCUDASolverDnHandle();
  const int64_t chunk = std::min<int64_t>(batch, sc::kTuning.max_small_batch);
  int lwork = 0;
  check(sc::small_eigh_workspace(handle, ptr(G), ptr(W), static_cast<int>(chunk), &lwork),
        "sizing the syevjBatched workspace");
  TORCH_CHECK(lwork >= 0, "svs.refine (CUDA): syevjBatched workspace size overflows int");
  at::Tensor work = at::empty({std::max(lwork, 1)}, buffers_[G].options());
  keep_alive_.push_back(work);
  for (int64_t b0 = 0; b0 < batch; b0 += chunk) {
    const int count = static_cast<int>(std::min(chunk, batch - b0));
    check(sc::small_eigh(handle, ptr(G) + b0 * DD, ptr(W) + b0 * D, work.data_ptr<double>(), lwork,
                         info + b0, count),
          "running syevjBatched");
  }

  std::vector<sc::SegmentDesc> seg;
  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    const int64_t top = b * D + (D - a.k());
    sc::SegmentDesc d{};
    d.values = ptr(W) + top;
    d.inv = ptr(I) + top;
    d.ill = (method_ == Method::Auto) ? ill + b : nullptr;
    d.k = a.k();
    d.rel_tol = gram_rel_tol(a);
    d.eigen = 1;
    seg.push_back(d);
  }
  at::Tensor seg_dev = upload(seg, device_);
  keep_alive_.push_back(seg_dev);
  check(sc::threshold_segments(device_ptr<sc::SegmentDesc>(seg_dev), batch,
                               sc::kTuning.gram_max_eigen_ratio, stream()),
        "thresholding the Gram spectra");

  for (const auto& [p0, count] : runs) {
    const Mat& a = mat(ids[p0]);
    const int64_t qoff = (D - a.k()) * D;  // first of the top-k eigenvector columns
    check(sc::gram_apply(blas, ptr(M) + moff[p0], a.m, a.n, count, ptr(G) + p0 * DD + qoff, D, DD,
                         ptr(P) + moff[p0]),
          "applying the eigenvectors (DGEMM)");
  }
  std::vector<int64_t> inv_off(batch);  // top-k inverse singular values of each padded matrix
  for (int64_t b = 0; b < batch; ++b) inv_off[b] = b * D + (D - mat(ids[b]).k());
  scale_by_inverse_sigma(ids, P, moff, I, inv_off);

  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    const int64_t k = a.k(), q = b * DD + (D - k) * D;
    Factors& f = factors_[ids[b]];
    f.s = view(W, b * D + (D - k), {k}, {1});
    if (a.m <= a.n) {
      f.u = view(G, q, {a.m, k}, {1, D});           // Q (column-major, ld 32)
      f.vh = view(P, moff[b], {k, a.n}, {a.n, 1});  // diag(1/s) Q^T M
    } else {
      f.u = view(P, moff[b], {a.m, k}, {k, 1});     // M Q diag(1/s)
      f.vh = view(G, q, {k, a.n}, {D, 1});          // Q^T
    }
    f.needs_threshold = false;
  }
}

// ---- Route::Gram: float64 Gram per shape group, batched (or per-matrix) eigensolver ---------------------
void Wave::run_gram(const std::vector<int>& ids, int* info, int* ill) {
  const int64_t batch = static_cast<int64_t>(ids.size());
  std::vector<int64_t> moff(batch + 1, 0), goff(batch + 1, 0), woff(batch + 1, 0);
  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    moff[b + 1] = moff[b] + a.m * a.n;
    goff[b + 1] = goff[b] + a.k() * a.k();
    woff[b + 1] = woff[b] + a.k();
  }
  const int M = add_buffer(moff[batch]), G = add_buffer(goff[batch]), W = add_buffer(woff[batch]),
            I = add_buffer(woff[batch]), P = add_buffer(moff[batch]);

  std::vector<sc::PackDesc> desc;
  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    desc.push_back(pack_desc(a, ptr(M) + moff[b], a.n, 1, a.m, a.n));
  }
  pack(desc);

  cublasHandle_t blas = at::cuda::getCurrentCUDABlasHandle();
  const auto runs = shape_runs(ids, mats_);
  for (const auto& [p0, count] : runs) {
    const Mat& a = mat(ids[p0]);
    check(sc::gram(blas, ptr(M) + moff[p0], a.m, a.n, count, ptr(G) + goff[p0], a.k(),
                   a.k() * a.k()),
          "forming the Gram matrices (DGEMM)");
  }

  // Eigensolver: one XsyevBatched per shape group (split so that n * n * batch <= INT32_MAX), or
  // Xsyevd per matrix on the side streams for Gram matrices above batched_eigh_max_side.
  cusolverDnHandle_t handle = at::cuda::getCurrentCUDASolverDnHandle();
  std::vector<int64_t> one_by_one;  // positions
  for (const auto& [p0, count] : runs) {
    const int64_t k = mat(ids[p0]).k();
    if (k > sc::kTuning.batched_eigh_max_side) {
      for (int64_t p = p0; p < p0 + count; ++p) one_by_one.push_back(p);
      continue;
    }
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(count, INT32_MAX / (k * k)));
    size_t dev_bytes = 0, host_bytes = 0;
    check(sc::eigh_batched_workspace(handle, ptr(G) + goff[p0], k, ptr(W) + woff[p0], chunk,
                                     &dev_bytes, &host_bytes),
          "sizing the XsyevBatched workspace");
    at::Tensor dev_work = at::empty({static_cast<int64_t>(std::max<size_t>(dev_bytes, 1))},
                                    at::TensorOptions().dtype(at::kByte).device(device_));
    keep_alive_.push_back(dev_work);
    host_work_.emplace_back(std::max<size_t>(host_bytes, 1));
    for (int64_t c0 = p0; c0 < p0 + count; c0 += chunk) {
      const int64_t c = std::min(chunk, p0 + count - c0);
      check(sc::eigh_batched(handle, ptr(G) + goff[c0], k, ptr(W) + woff[c0], dev_work.data_ptr(),
                             dev_bytes, host_work_.back().data(), host_bytes, info + c0, c),
            "running XsyevBatched");
    }
  }
  if (!one_by_one.empty()) {
    // Workspaces are sized and allocated before the fork (allocation is ordered on the current
    // stream); the Gram matrices were formed on it before the fork too.
    const int slots = sc::kTuning.num_streams;
    std::vector<double> cost;
    for (int64_t p : one_by_one) cost.push_back(std::pow(static_cast<double>(mat(ids[p]).k()), 3));
    const std::vector<int> slot = assign_slots(cost, slots);
    std::vector<size_t> dev_need(slots, 1), host_need(slots, 1);
    std::vector<size_t> dev_bytes(one_by_one.size()), host_bytes(one_by_one.size());
    for (size_t j = 0; j < one_by_one.size(); ++j) {
      const int64_t p = one_by_one[j];
      check(sc::eigh_workspace(handle, ptr(G) + goff[p], mat(ids[p]).k(), ptr(W) + woff[p],
                               &dev_bytes[j], &host_bytes[j]),
            "sizing the Xsyevd workspace");
      dev_need[slot[j]] = std::max(dev_need[slot[j]], dev_bytes[j]);
      host_need[slot[j]] = std::max(host_need[slot[j]], host_bytes[j]);
    }
    std::vector<at::Tensor> dev_work;
    std::vector<size_t> host_index;
    for (int s = 0; s < slots; ++s) {
      dev_work.push_back(at::empty({static_cast<int64_t>(dev_need[s])},
                                   at::TensorOptions().dtype(at::kByte).device(device_)));
      host_work_.emplace_back(host_need[s]);
      host_index.push_back(host_work_.size() - 1);
    }
    for (auto& t : dev_work) keep_alive_.push_back(t);
    Fanout fan(device_.index());
    fan.fork();
    for (size_t j = 0; j < one_by_one.size(); ++j) {
      const int64_t p = one_by_one[j];
      const int s = slot[j] % fan.size();
      check(sc::eigh(fan.handle(s), ptr(G) + goff[p], mat(ids[p]).k(), ptr(W) + woff[p],
                     dev_work[s].data_ptr(), dev_need[s], host_work_[host_index[s]].data(),
                     host_need[s], info + p),
            "running Xsyevd");
    }
  }

  std::vector<sc::SegmentDesc> seg;
  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    sc::SegmentDesc d{};
    d.values = ptr(W) + woff[b];
    d.inv = ptr(I) + woff[b];
    d.ill = (method_ == Method::Auto) ? ill + b : nullptr;
    d.k = a.k();
    d.rel_tol = gram_rel_tol(a);
    d.eigen = 1;
    seg.push_back(d);
  }
  at::Tensor seg_dev = upload(seg, device_);
  keep_alive_.push_back(seg_dev);
  check(sc::threshold_segments(device_ptr<sc::SegmentDesc>(seg_dev), batch,
                               sc::kTuning.gram_max_eigen_ratio, stream()),
        "thresholding the Gram spectra");

  for (const auto& [p0, count] : runs) {
    const Mat& a = mat(ids[p0]);
    check(sc::gram_apply(blas, ptr(M) + moff[p0], a.m, a.n, count, ptr(G) + goff[p0], a.k(),
                         a.k() * a.k(), ptr(P) + moff[p0]),
          "applying the eigenvectors (DGEMM)");
  }
  scale_by_inverse_sigma(ids, P, moff, I, woff);

  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    const int64_t k = a.k();
    Factors& f = factors_[ids[b]];
    f.s = view(W, woff[b], {k}, {1});
    if (a.m <= a.n) {
      f.u = view(G, goff[b], {a.m, k}, {1, k});     // Q (column-major, ld k)
      f.vh = view(P, moff[b], {k, a.n}, {a.n, 1});  // diag(1/s) Q^T M
    } else {
      f.u = view(P, moff[b], {a.m, k}, {k, 1});     // M Q diag(1/s)
      f.vh = view(G, goff[b], {k, a.n}, {k, 1});    // Q^T
    }
    f.needs_threshold = false;
  }
}

// ---- Route::Jacobi / Route::Exact: one SVD per matrix, spread over the side streams ------------------
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

  std::vector<sc::PackDesc> desc;
  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    if (a.m > a.n)
      desc.push_back(pack_desc(a, ptr(X) + xoff[b], /*stride_r=*/1, /*stride_c=*/a.m, a.m, a.n));
    else
      desc.push_back(pack_desc(a, ptr(X) + xoff[b], /*stride_r=*/a.n, /*stride_c=*/1, a.m, a.n));
  }
  pack(desc);

  // Everything is sized and allocated before the fork.
  const int slots = sc::kTuning.num_streams;
  std::vector<double> cost;
  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    cost.push_back(static_cast<double>(a.rows()) * a.k() * a.k());
  }
  const std::vector<int> slot = assign_slots(cost, slots);
  std::vector<int> lwork_need(slots, 1);
  std::vector<int64_t> rwork_need(slots, 1);
  Fanout fan(device_.index());
  {
    for (int64_t b = 0; b < batch; ++b) {
      const Mat& a = mat(ids[b]);
      const int rows = static_cast<int>(a.rows()), cols = static_cast<int>(a.k());
      cusolverDnHandle_t h = fan.handle(slot[b] % fan.size());
      int lwork = 0;
      if (exact)
        check(sc::exact_svd_workspace(h, rows, cols, &lwork), "sizing the gesvd workspace");
      else
        check(sc::jacobi_svd_workspace(h, ptr(X) + xoff[b], rows, cols, ptr(S) + soff[b],
                                       ptr(U) + xoff[b], ptr(V) + voff[b], &lwork),
              "sizing the gesvdj workspace");
      lwork_need[slot[b]] = std::max(lwork_need[slot[b]], lwork);
      rwork_need[slot[b]] = std::max(rwork_need[slot[b]], a.k());
    }
  }
  std::vector<at::Tensor> work, rwork;
  for (int s = 0; s < slots; ++s) {
    work.push_back(at::empty({lwork_need[s]}, buffers_[X].options()));
    rwork.push_back(at::empty({rwork_need[s]}, buffers_[X].options()));
    keep_alive_.push_back(work.back());
    keep_alive_.push_back(rwork.back());
  }
  {
    fan.fork();
    for (int64_t b = 0; b < batch; ++b) {
      const Mat& a = mat(ids[b]);
      const int rows = static_cast<int>(a.rows()), cols = static_cast<int>(a.k());
      const int s = slot[b] % fan.size();
      if (exact)
        check(sc::exact_svd(fan.handle(s), ptr(X) + xoff[b], rows, cols, ptr(S) + soff[b],
                            ptr(U) + xoff[b], ptr(V) + voff[b], work[s].data_ptr<double>(),
                            lwork_need[s], rwork[s].data_ptr<double>(), info + b),
              "running gesvd");
      else
        check(sc::jacobi_svd(fan.handle(s), ptr(X) + xoff[b], rows, cols, ptr(S) + soff[b],
                             ptr(U) + xoff[b], ptr(V) + voff[b], work[s].data_ptr<double>(),
                             lwork_need[s], info + b),
              "running gesvdj");
    }
  }

  for (int64_t b = 0; b < batch; ++b) {
    const Mat& a = mat(ids[b]);
    const int64_t k = a.k();
    Factors& f = factors_[ids[b]];
    f.s = view(S, soff[b], {k}, {1});
    if (a.m > a.n) {  // X = M: U = Ux; Vh = Vx^T (Jacobi) or VTx (exact)
      f.u = view(U, xoff[b], {a.m, k}, {1, a.m});
      f.vh = exact ? view(V, voff[b], {k, a.n}, {1, k}) : view(V, voff[b], {k, a.n}, {k, 1});
    } else {  // X = M^T: U = Vx (Jacobi) or VTx^T (exact); Vh = Ux^T
      f.u = exact ? view(V, voff[b], {a.m, k}, {k, 1}) : view(V, voff[b], {a.m, k}, {1, k});
      f.vh = view(U, xoff[b], {k, a.n}, {a.n, 1});
    }
    f.rel_tol = svd_rel_tol(a);
    f.needs_threshold = true;
  }
}

// One launch: every raw singular value <= rel_tol * s_max becomes 0 (refine.h's rank rule).
void Wave::scale_by_inverse_sigma(const std::vector<int>& ids, int products,
                                    const std::vector<int64_t>& moff, int inv,
                                    const std::vector<int64_t>& inv_off) {
  std::vector<sc::ScaleDesc> scale;
  int64_t total = 0;
  for (size_t b = 0; b < ids.size(); ++b) {
    const Mat& a = mat(ids[b]);
    sc::ScaleDesc d{};
    d.p = ptr(products) + moff[b];
    d.scale = ptr(inv) + inv_off[b];
    d.rows = a.m;
    d.cols = a.n;
    d.begin = total;
    d.by_row = a.m <= a.n ? 1 : 0;
    total += a.m * a.n;
    scale.push_back(d);
  }
  at::Tensor scale_dev = upload(scale, device_);
  keep_alive_.push_back(scale_dev);
  check(sc::scale(device_ptr<sc::ScaleDesc>(scale_dev), static_cast<int64_t>(ids.size()), total, stream()),
        "scaling by the inverse singular values");
}

void Wave::threshold_svd_factors() {
  std::vector<sc::SegmentDesc> seg;
  for (auto& f : factors_) {
    if (!f.needs_threshold) continue;
    sc::SegmentDesc d{};
    d.values = ptr(f.s.buffer) + f.s.offset;
    d.k = f.s.sizes[0];
    d.rel_tol = f.rel_tol;
    d.eigen = 0;
    seg.push_back(d);
    f.needs_threshold = false;
  }
  if (seg.empty()) return;
  at::Tensor dev = upload(seg, device_);
  keep_alive_.push_back(dev);
  check(sc::threshold_segments(device_ptr<sc::SegmentDesc>(dev), static_cast<int64_t>(seg.size()),
                               sc::kTuning.gram_max_eigen_ratio, stream()),
        "thresholding the singular values");
}

// The factor as a tensor: float64 for float64 inputs, float32 otherwise (one conversion per
// buffer, shared by every matrix that lives in it).
at::Tensor Wave::materialise(const View& v, bool f64) {
  at::Tensor base = buffers_[v.buffer];
  if (!f64) {
    auto it = float_buffers_.find(v.buffer);
    if (it == float_buffers_.end()) it = float_buffers_.emplace(v.buffer, base.to(at::kFloat)).first;
    base = it->second;
  }
  return base.as_strided(v.sizes, v.strides, v.offset);
}

using ReconstructFn = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                           c10::string_view);

void Wave::run(const std::string& map, std::vector<at::Tensor>& outputs) {
  const int count = static_cast<int>(mats_.size());
  std::map<Route, std::vector<int>> pending;
  for (int i = 0; i < count; ++i) pending[sc::plan_route(mat(i).m, mat(i).n, method_)].push_back(i);

  while (!pending.empty()) {
    std::vector<std::pair<Route, std::vector<int>>> batches;
    int64_t total = 0;
    for (auto& [route, ids] : pending) {
      std::stable_sort(ids.begin(), ids.end(), [&](int x, int y) {
        return std::make_pair(mat(x).m, mat(x).n) < std::make_pair(mat(y).m, mat(y).n);
      });
      total += static_cast<int64_t>(ids.size());
      batches.emplace_back(route, ids);
    }
    // status[p] = info of the p-th matrix of the phase, status[total + p] = its ill flag.
    at::Tensor status =
        at::zeros({2 * total}, at::TensorOptions().dtype(at::kInt).device(device_));
    int64_t pos = 0;
    for (const auto& [route, ids] : batches) {
      run_route(route, ids, status.data_ptr<int>() + pos, status.data_ptr<int>() + total + pos);
      pos += static_cast<int64_t>(ids.size());
    }
    const at::Tensor host = status.cpu();  // the host sync of this phase (one D2H copy)
    const int* h = host.data_ptr<int>();
    std::map<Route, std::vector<int>> next;
    pos = 0;
    for (const auto& [route, ids] : batches) {
      for (int i : ids) {
        const int info = h[pos], ill = h[total + pos];
        ++pos;
        TORCH_CHECK(info >= 0, "svs.refine (CUDA): internal error: ", sc::route_name(route),
                    " reported info ", info, " (invalid argument) for weights[", mat(i).index,
                    "] of shape (", mat(i).m, ", ", mat(i).n, ")");
        if (info > 0) {
          TORCH_CHECK(route != Route::Exact, "svs.refine (CUDA): the SVD of weights[",
                      mat(i).index, "] (", mat(i).m, "x", mat(i).n,
                      ") did not converge (gesvd info ", info, ")");
          next[Route::Exact].push_back(i);  // not converged: redo exactly
        } else if (ill != 0) {
          next[Route::Jacobi].push_back(i);  // outside the Gram route's accuracy range
        }
      }
    }
    pending = std::move(next);
  }
  threshold_svd_factors();

  std::vector<at::Tensor> u, s, vh, out;
  for (int i = 0; i < count; ++i) {
    const Mat& a = mat(i);
    const Factors& f = factors_[i];
    u.push_back(materialise(f.u, a.f64));
    s.push_back(materialise(f.s, a.f64));
    vh.push_back(materialise(f.vh, a.f64));
    out.push_back(outputs[a.index].view({a.m, a.n}));
  }
  static auto reconstruct = c10::Dispatcher::singleton()
                                .findSchemaOrThrow("svs::_reconstruct", "")
                                .typed<ReconstructFn>();
  reconstruct.call(u, s, vh, out, map);
}

// Estimated float64/float32 scratch of one matrix (bytes), to cut a call into waves.
int64_t workspace_bytes(const Mat& a, Route route) {
  if (route == Route::Small) return 3 * 1024 * 8 + 32 * 8 + 2 * 1024 * 4;
  const int64_t mn = a.m * a.n, kk = a.k() * a.k();
  return 8 * (3 * mn + 2 * kk + 2 * a.k()) + 4 * (mn + kk);
}

OptionalTensorList scale_biases(const OptionalTensorList& biases, double eps,
                                const at::Device& device) {
  std::vector<std::optional<at::Tensor>> out(biases.size());
  std::vector<sc::BiasDesc> desc;
  for (size_t i = 0; i < biases.size(); ++i) {
    const std::optional<at::Tensor> b = biases[i];
    if (!b.has_value()) continue;
    int32_t type = 0;
    if (!source_type(b->scalar_type(), &type)) {  // other float dtypes: the ATen rule
      out[i] = scale_bias(*b, eps);
      continue;
    }
    at::Tensor dst = at::empty(b->sizes(), b->options().memory_format(at::MemoryFormat::Contiguous));
    sc::BiasDesc d{};
    d.src = b->data_ptr();
    d.dst = dst.data_ptr();
    d.n = b->numel();
    d.src_stride = b->stride(0);
    d.src_type = type;
    desc.push_back(d);
    out[i] = dst;
  }
  if (!desc.empty()) {
    at::Tensor dev = upload(desc, device);
    check(sc::scale_biases(device_ptr<sc::BiasDesc>(dev), static_cast<int64_t>(desc.size()), eps,
                           c10::cuda::getCurrentCUDAStream(device.index()).stream()),
          "scaling the biases");
  }
  OptionalTensorList result;
  for (auto& b : out) result.push_back(b);
  return result;
}

RefineResult refine_cuda(at::TensorList weights, const OptionalTensorList& biases,
                         c10::string_view map_view, double eps, c10::string_view method_view) {
  check_inputs(weights, biases, eps);
  const std::string map_name(map_view);
  parse_map(map_name);  // validates; _reconstruct applies the map
  const std::string method_name(method_view);
  Method method = Method::Auto;
  TORCH_CHECK(sc::parse_method(method_name, &method), "svs.refine: method '", method_name,
              "' is not available on CUDA; expected auto, jacobi, gram or svd");

  const at::Device device = weights[0].device();
  c10::cuda::CUDAGuard guard(device);

  std::vector<Mat> mats;
  std::vector<at::Tensor> outputs;
  mats.reserve(weights.size());
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor& w = weights[i];
    Mat a;
    a.index = static_cast<int64_t>(i);
    a.m = w.size(0);
    a.n = w.numel() / a.m;
    a.src = w.reshape({a.m, a.n});
    if (!source_type(a.src.scalar_type(), &a.src_type)) {
      a.src = a.src.to(at::kFloat);  // e.g. float8: unpacked through float32
      a.src_type = sc::kSourceF32;
    }
    a.f64 = w.scalar_type() == at::kDouble;
    mats.push_back(std::move(a));
    outputs.push_back(at::empty(w.sizes(), w.options().memory_format(at::MemoryFormat::Contiguous)));
  }

  // Order by (route, shape) so that batched routes stay batched inside a wave, then cut waves.
  std::vector<int> order(mats.size());
  std::iota(order.begin(), order.end(), 0);
  std::vector<Route> first_route;
  for (const Mat& a : mats) first_route.push_back(sc::plan_route(a.m, a.n, method));
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) {
    return std::make_tuple(static_cast<int>(first_route[x]), mats[x].m, mats[x].n) <
           std::make_tuple(static_cast<int>(first_route[y]), mats[y].m, mats[y].n);
  });
  std::vector<const Mat*> wave;
  int64_t wave_bytes = 0;
  auto flush = [&]() {
    if (wave.empty()) return;
    Wave(std::move(wave), method, device).run(map_name, outputs);
    wave.clear();
    wave_bytes = 0;
  };
  for (int i : order) {
    const int64_t bytes = workspace_bytes(mats[i], first_route[i]);
    if (!wave.empty() && wave_bytes + bytes > sc::kTuning.wave_bytes) flush();
    wave.push_back(&mats[i]);
    wave_bytes += bytes;
  }
  flush();

  return {outputs, scale_biases(biases, eps, device)};
}

}  // namespace

TORCH_LIBRARY_IMPL(svs, CUDA, m) { m.impl("refine", &refine_cuda); }

}  // namespace svs
