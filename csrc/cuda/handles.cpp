// Handle pools and side streams (handles.h).
#include "handles.h"

#include <ATen/cuda/CUDAEvent.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <numeric>

namespace svs {
namespace cuda {
namespace {

template <typename Handle>
struct Api;

template <>
struct Api<cusolverDnHandle_t> {
  static constexpr const char* name = "cuSOLVER";
  static bool create(cusolverDnHandle_t* h) { return cusolverDnCreate(h) == CUSOLVER_STATUS_SUCCESS; }
  static bool set_stream(cusolverDnHandle_t h, cudaStream_t s) {
    return cusolverDnSetStream(h, s) == CUSOLVER_STATUS_SUCCESS;
  }
};

template <>
struct Api<cublasHandle_t> {
  static constexpr const char* name = "cuBLAS";
  static bool create(cublasHandle_t* h) { return cublasCreate(h) == CUBLAS_STATUS_SUCCESS; }
  static bool set_stream(cublasHandle_t h, cudaStream_t s) {
    return cublasSetStream(h, s) == CUBLAS_STATUS_SUCCESS;
  }
};

// Free handles per device.
template <typename Handle>
struct Pool {
  std::mutex mutex;
  std::map<c10::DeviceIndex, std::vector<Handle>> free;

  static Pool& get() {
    static Pool* pool = new Pool();  // never destroyed, like the handles in it
    return *pool;
  }
};

}  // namespace

template <typename Handle>
Lease<Handle>::Lease(c10::DeviceIndex device, cudaStream_t stream) : device_(device), handle_(nullptr) {
  Pool<Handle>& pool = Pool<Handle>::get();
  {
    std::lock_guard<std::mutex> lock(pool.mutex);
    std::vector<Handle>& free = pool.free[device];
    if (!free.empty()) {
      handle_ = free.back();
      free.pop_back();
    }
  }
  if (handle_ == nullptr)
    TORCH_CHECK(Api<Handle>::create(&handle_), "svs.refine (CUDA): creating a ", Api<Handle>::name,
                " handle on cuda:", static_cast<int>(device), " failed (out of memory?)");
  if (!Api<Handle>::set_stream(handle_, stream)) {
    std::lock_guard<std::mutex> lock(pool.mutex);
    pool.free[device_].push_back(handle_);
    TORCH_CHECK(false, "svs.refine (CUDA): setting the stream of a ", Api<Handle>::name, " handle failed");
  }
}

template <typename Handle>
Lease<Handle>::~Lease() {
  Pool<Handle>& pool = Pool<Handle>::get();
  std::lock_guard<std::mutex> lock(pool.mutex);
  pool.free[device_].push_back(handle_);
}

template class Lease<cusolverDnHandle_t>;
template class Lease<cublasHandle_t>;

Fanout::Fanout(c10::DeviceIndex device, int streams) : current_(c10::cuda::getCurrentCUDAStream(device)) {
  for (int i = 0; i < streams; ++i) {
    streams_.push_back(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device));
    handles_.push_back(std::make_unique<SolverHandle>(device, streams_.back().stream()));
  }
}

void Fanout::fork() {
  at::cuda::CUDAEvent event;
  event.record(current_);
  for (const auto& s : streams_) event.block(s);
  forked_ = true;
}

std::vector<int> Fanout::assign(const std::vector<double>& cost) const {
  std::vector<int> order(cost.size()), slot(cost.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return cost[a] > cost[b]; });
  std::vector<double> load(streams_.size(), 0.0);
  for (int i : order) {
    const int s = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    slot[i] = s;
    load[s] += cost[i];
  }
  return slot;
}

Fanout::~Fanout() {
  if (!forked_) return;
  try {
    for (const auto& s : streams_) {
      at::cuda::CUDAEvent done;
      done.record(s);
      done.block(current_);
    }
  } catch (...) {
    // A failing event record means the context is broken; nothing sensible is left to do.
  }
}

}  // namespace cuda
}  // namespace svs
