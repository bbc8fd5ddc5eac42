// One wave of the CUDA kernel of svs::refine: the matrices decomposed and reconstructed together,
// their float64 (float32 on the float32 Gram routes) scratch buffers, and the phases that run
// their routes.
//
//   wave.cpp        buffers, packing, the phase loop (one host sync per phase), thresholds,
//                   factor conversion, reconstruction
//   gram_route.cpp  kRouteCudaGram, kRouteCudaGramPadded and their float32 forms: one Gram
//                   pipeline for all four
//   svd_routes.cpp  kRouteCudaSmall (gesvdjBatched) and the per-matrix Jacobi / exact SVDs
//
// Every route writes one `info` per matrix (and, for the Gram routes under "auto", one
// ill-conditioned flag) into a device status buffer that is copied to the host once per phase.
// Matrices of a float32 Gram route that did not converge or are over their error budget are
// redone by its float64 form in the next phase (planner.h); matrices whose float64 solver did
// not converge, and float64 Gram matrices outside the Gram route's accuracy range, by
// kRouteCudaExact (gesvd); a failing gesvd raises.
#pragma once

#include "planner.h"
#include "refine.h"
#include "svs_cuda.h"

#include <ATen/ATen.h>

#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

namespace svs {
namespace cuda {

// Raises with the name of the failed call.
void check(const Status& st, const char* while_doing);

// One weight of the call, as the routes see it.
struct Mat {
  int64_t index;    // position in `weights`
  int64_t m, n;     // flattened shape
  at::Tensor src;   // (m, n) view of the weight (a copy when reshape has to copy)
  int32_t src_type; // SourceType
  at::ScalarType dtype;  // the weight's dtype, and its result's
  bool f64;         // float64 input: reconstruct in float64
  bool float32;     // bf16/fp16 output: the float32 Gram routes first (planner.h)
  int64_t k() const { return std::min(m, n); }
  int64_t rows() const { return std::max(m, n); }
};

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

// Estimated device scratch of one matrix on `route` (bytes): float64 buffers plus the float32
// copies of its factors. Cuts a call into waves.
int64_t workspace_bytes(const Mat& a, RouteCode route);

class Wave {
 public:
  // `slack`: bytes of the wave's budget (kTuning.wave_bytes) left after its estimated scratch;
  // solver workspaces beyond it shrink their batch.
  Wave(std::vector<const Mat*> mats, Method method, const SigmaMap& map, const at::Device& device,
       int64_t slack)
      : mats_(std::move(mats)), method_(method), map_(map), device_(device), slack_(slack),
        factors_(mats_.size()) {}

  // Writes outputs[mat.index] for every matrix of the wave, and, if `spectra` is not null, its
  // singular values and route (refine.h).
  void run(std::vector<at::Tensor>& outputs, Spectra* spectra);

 private:
  // A strided view into one of the wave's flat buffers (float64; float32 on the float32 Gram routes).
  struct View {
    int buffer = -1;
    int64_t offset = 0;
    std::vector<int64_t> sizes, strides;
  };
  struct Factors {
    View u, s, vh;                 // out = U diag(f(s)) Vh
    double rel_tol = 0.0;          // rank tolerance relative to s_max (SVD routes)
    bool needs_threshold = false;  // s is raw (SVD routes); the Gram routes threshold themselves
    bool ascending = false;        // s in ascending order (Gram routes: eigenvalue order)
    RouteCode route = kRouteCudaSmall;  // the route that computed them
  };
  static View view(int buffer, int64_t offset, std::vector<int64_t> sizes, std::vector<int64_t> strides) {
    return View{buffer, offset, std::move(sizes), std::move(strides)};
  }
  // SVD routes: factors (u, s, vh) of matrix `id`, whose raw s needs the rank threshold.
  void set_svd_factors(int id, RouteCode route, View u, View s, View vh);
  // Copies each matrix's thresholded singular values (descending) and route into `spectra`.
  void export_spectra(Spectra& spectra);

  const Mat& mat(int i) const { return *mats_[i]; }
  cudaStream_t stream() const;
  int add_buffer(int64_t numel, bool zero = false, at::ScalarType dtype = at::kDouble);
  double* ptr(int buffer) { return data<double>(buffer); }
  template <typename T>
  T* data(int buffer) { return buffers_[buffer].data_ptr<T>(); }
  at::Tensor device_bytes(size_t bytes) const;
  // Where pack() writes one matrix: element (r, c) goes to dst[r * stride_r + c * stride_c],
  // zeros fill the rest of the dst_rows x dst_cols region; dst is float64, or float32 if f32.
  struct PackTarget {
    void* dst;
    int64_t stride_r, stride_c, dst_rows, dst_cols;
    bool f32 = false;
  };
  // One launch converts (and zero-pads, transposes) every listed matrix into scratch.
  void pack(const std::vector<int>& ids, const std::vector<PackTarget>& targets);
  void threshold(std::vector<SegmentDesc>& segments);

  void run_route(RouteCode route, const std::vector<int>& ids, int* info, int* ill);
  void run_small(const std::vector<int>& ids, int* info);
  // A batched Jacobi solver (gesvdjBatched, syevjBatched) over `batch` 32x32 matrices, in chunks
  // whose int workspace size fits (int_workspace.h): size(handle, count, &lwork) queries,
  // run(handle, first, count, work, lwork) solves matrices [first, first + count); the workspace
  // holds lwork elements of `work_type`.
  using JacobiSize = std::function<Status(cusolverDnHandle_t, int, int*)>;
  using JacobiRun = std::function<Status(cusolverDnHandle_t, int64_t, int, void*, int)>;
  void run_batched_jacobi(int64_t batch, const char* name, at::ScalarType work_type, const JacobiSize& size,
                          const JacobiRun& run);
  // The Gram routes in precision T: double (kRouteCudaGram, kRouteCudaGramPadded) or float
  // (kRouteCudaGram32, kRouteCudaGramPadded32, whose matrices outside gram32_within_budget are
  // flagged in `ill` for the float64 route).
  template <typename T>
  void run_gram(const std::vector<int>& ids, int* info, int* ill, bool padded);
  template <typename T>
  void solve_padded_eigen(int64_t batch, int G, int W, int* info);
  template <typename T>
  void solve_gram_eigen(const std::vector<int>& ids, const std::vector<int64_t>& goff,
                        const std::vector<int64_t>& woff, int G, int W, int* info);
  // Float32 Gram routes: ill[p] = 1 for each matrix whose float32 Gram eigenvalues (W, ascending,
  // the top k of ld[p] slots at woff[p], of the matrix scaled by 2^-exps[p]) are outside the error
  // budget of its output dtype.
  void flag_over_budget(const std::vector<int>& ids, const std::vector<int64_t>& ld,
                        const std::vector<int64_t>& woff, int W, const at::Tensor& exps, int* ill);
  void run_per_matrix_svd(const std::vector<int>& ids, int* info, bool exact);
  void threshold_svd_factors();
  // Each product P_b = M_b Q_b (rows or columns, whichever is the short side) times its inverse
  // singular values buffer(inv)[inv_off[b] ...], for all matrices in one launch.
  void scale_by_inverse_sigma(const std::vector<int>& ids, int products,
                              const std::vector<int64_t>& moff, int inv,
                              const std::vector<int64_t>& inv_off);
  // The factors as tensors for svs::_reconstruct: float64 for float64 inputs, float32 otherwise.
  // Frees every scratch buffer no factor needs, then converts buffer by buffer (a float32 buffer,
  // of a float32 Gram route, is used as it is).
  void materialise(std::vector<at::Tensor>& u, std::vector<at::Tensor>& s, std::vector<at::Tensor>& vh);

  std::vector<const Mat*> mats_;
  Method method_;
  SigmaMap map_;
  at::Device device_;
  int64_t slack_;
  std::vector<Factors> factors_;
  std::vector<at::Tensor> buffers_;           // flat float64 (or float32) device buffers
  std::vector<std::vector<char>> host_work_;  // cuSOLVER host workspaces, kept for the wave
  std::vector<at::Tensor> keep_alive_;        // device descriptors and workspaces
};

}  // namespace cuda
}  // namespace svs
