// cuSOLVER / cuBLAS handles and side streams of the CUDA kernel of svs::refine.
//
// The extension owns its handles. ATen's getters (at::cuda::getCurrentCUDASolverDnHandle) are
// defined in libtorch_cuda_linalg.so, which torch loads lazily and privately, so an extension
// that calls them does not even import (undefined symbol). Handles are pooled per device and
// leased for one scope: a lease is exclusive, so concurrent calls from several threads never share
// a handle, and it is set to the caller's stream at each lease. Handles are never destroyed (as in
// ATen: destroying them at process exit can outlive the CUDA context).
#pragma once

#include <c10/cuda/CUDAStream.h>
#include <cublas_v2.h>
#include <cusolverDn.h>

#include <memory>
#include <vector>

namespace svs {
namespace cuda {

template <typename Handle>
class Lease {
 public:
  // A handle of `device` (the current device), set to `stream`.
  Lease(c10::DeviceIndex device, cudaStream_t stream);
  ~Lease();
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  operator Handle() const { return handle_; }

 private:
  c10::DeviceIndex device_;
  Handle handle_;
};

using SolverHandle = Lease<cusolverDnHandle_t>;
using BlasHandle = Lease<cublasHandle_t>;

// The side streams of one per-matrix route, with a cuSOLVER handle each. fork(): every side
// stream waits for the work enqueued so far on the current stream (packing; allocations, which the
// caching allocator orders on the current stream). Join (destructor, also when an exception
// unwinds): the current stream waits for every side stream, so buffers freed afterwards are reused
// only after the side work.
class Fanout {
 public:
  Fanout(c10::DeviceIndex device, int streams);
  ~Fanout();
  void fork();
  int size() const { return static_cast<int>(streams_.size()); }
  cusolverDnHandle_t handle(int i) const { return *handles_[i]; }
  // A side stream per item, balancing the summed cost (greedy, longest first).
  std::vector<int> assign(const std::vector<double>& cost) const;

 private:
  c10::cuda::CUDAStream current_;
  std::vector<c10::cuda::CUDAStream> streams_;
  std::vector<std::unique_ptr<SolverHandle>> handles_;
  bool forked_ = false;
};

}  // namespace cuda
}  // namespace svs
