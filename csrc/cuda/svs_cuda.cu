// Device side of the CUDA kernel of svs::refine (see svs_cuda.h). No torch headers here.
#include "svs_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>

namespace svs {
namespace cuda {
namespace {

#define SVS_CUSOLVER(expr)                                            \
  do {                                                                \
    const cusolverStatus_t svs_status_ = (expr);                      \
    if (svs_status_ != CUSOLVER_STATUS_SUCCESS)                       \
      return Status{#expr, static_cast<int>(svs_status_)};            \
  } while (0)

#define SVS_CUBLAS(expr)                                              \
  do {                                                                \
    const cublasStatus_t svs_status_ = (expr);                        \
    if (svs_status_ != CUBLAS_STATUS_SUCCESS)                         \
      return Status{#expr, static_cast<int>(svs_status_)};            \
  } while (0)

Status launch_status(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return Status{kernel, static_cast<int>(err)};
  return Status{};
}

// Launches kernel<<<grid, threads, 0, stream>>>(args...) and reports its launch error only.
// cudaGetLastError returns (and clears) the last error of ANY earlier runtime call of this thread.
// An error pending before our launch is not ours (every launch of ours is checked right after
// it; cuBLAS/cuSOLVER return their own status), e.g. one another library left unread: it is
// dropped here, not turned into a failure of svs.refine. A sticky error (a broken context) cannot
// be cleared: the launch fails with it and the check after the launch reports it.
template <typename... KernelArgs, typename... Args>
Status launch(const char* name, void (*kernel)(KernelArgs...), int64_t grid, int threads,
              cudaStream_t stream, Args... args) {
  (void)cudaGetLastError();
  if (grid <= 0 || grid > INT_MAX) return Status{name, static_cast<int>(cudaErrorInvalidConfiguration)};
  kernel<<<static_cast<unsigned>(grid), threads, 0, stream>>>(args...);
  return launch_status(name);
}

// ---- tiled element-wise kernels over a descriptor list ----------------------------------------
// Every descriptor owns a range [begin, begin + size) of a global element index. A block handles
// one tile of kTile consecutive elements: thread 0 finds the first and last descriptor of the
// tile, then each thread binary-searches only inside that range (zero steps inside a large
// matrix, a few steps across many tiny ones).
constexpr int kThreads = 256;
constexpr int64_t kTile = 4 * kThreads;

template <typename Desc>
__device__ int64_t last_not_after(const Desc* desc, int64_t lo, int64_t hi, int64_t e) {
  // largest i in [lo, hi] with desc[i].begin <= e (desc[lo].begin <= e holds)
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (desc[mid].begin <= e) lo = mid; else hi = mid - 1;
  }
  return lo;
}

template <typename Desc>
__device__ void tile_range(const Desc* desc, int64_t count, int64_t first, int64_t last,
                           int64_t* range) {
  if (threadIdx.x == 0) {
    range[0] = last_not_after(desc, 0, count - 1, first);
    range[1] = last_not_after(desc, range[0], count - 1, last);
  }
  __syncthreads();
}

__device__ __forceinline__ double load_as_double(const void* p, int32_t type, int64_t off) {
  switch (type) {
    case kSourceF32: return static_cast<double>(static_cast<const float*>(p)[off]);
    case kSourceF64: return static_cast<const double*>(p)[off];
    case kSourceF16: return static_cast<double>(__half2float(static_cast<const __half*>(p)[off]));
    default: return static_cast<double>(__bfloat162float(static_cast<const __nv_bfloat16*>(p)[off]));
  }
}

__global__ void pack_kernel(const PackDesc* desc, int64_t count, int64_t total) {
  __shared__ int64_t range[2];
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t last = (first + kTile < total ? first + kTile : total) - 1;
  tile_range(desc, count, first, last, range);
  for (int64_t e = first + threadIdx.x; e <= last; e += blockDim.x) {
    const PackDesc& d = desc[last_not_after(desc, range[0], range[1], e)];
    const int64_t t = e - d.begin;
    const int64_t r = t / d.dst_cols;
    const int64_t c = t - r * d.dst_cols;
    const double v = (r < d.rows && c < d.cols)
                         ? load_as_double(d.src, d.src_type, r * d.src_stride_r + c * d.src_stride_c)
                         : 0.0;
    const int64_t at = r * d.dst_stride_r + c * d.dst_stride_c;
    if (d.dst_f32) static_cast<float*>(d.dst)[at] = static_cast<float>(v);
    else static_cast<double*>(d.dst)[at] = v;
  }
}

__global__ void scale_kernel(const ScaleDesc* desc, int64_t count, int64_t total) {
  __shared__ int64_t range[2];
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t last = (first + kTile < total ? first + kTile : total) - 1;
  tile_range(desc, count, first, last, range);
  for (int64_t e = first + threadIdx.x; e <= last; e += blockDim.x) {
    const ScaleDesc& d = desc[last_not_after(desc, range[0], range[1], e)];
    const int64_t t = e - d.begin;
    const int64_t r = t / d.cols;
    const int64_t c = t - r * d.cols;
    const double f = d.scale[d.by_row ? r : c];
    if (d.p_f32) static_cast<float*>(d.p)[t] = static_cast<float>(static_cast<float*>(d.p)[t] * f);
    else static_cast<double*>(d.p)[t] *= f;
  }
}

// One block per segment: reduce max(s) (and min/max(l) in eigen mode), then threshold.
constexpr int kSegmentThreads = 128;

__global__ void threshold_kernel(const SegmentDesc* desc, double max_eigen_ratio) {
  __shared__ double s_max_part[kSegmentThreads];
  __shared__ double l_min_part[kSegmentThreads];
  __shared__ double l_max_part[kSegmentThreads];
  const SegmentDesc d = desc[blockIdx.x];
  double s_max = 0.0, l_min = 0.0, l_max = 0.0;
  bool any = false;
  for (int64_t i = threadIdx.x; i < d.k; i += blockDim.x) {
    const double v = d.values[i];
    const double s = d.eigen ? sqrt(fmax(v, 0.0)) : v;
    s_max = fmax(s_max, s);
    l_min = any ? fmin(l_min, v) : v;
    l_max = any ? fmax(l_max, v) : v;
    any = true;
  }
  // Threads without an element contribute neutral values.
  s_max_part[threadIdx.x] = s_max;
  l_min_part[threadIdx.x] = any ? l_min : INFINITY;
  l_max_part[threadIdx.x] = any ? l_max : -INFINITY;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      s_max_part[threadIdx.x] = fmax(s_max_part[threadIdx.x], s_max_part[threadIdx.x + stride]);
      l_min_part[threadIdx.x] = fmin(l_min_part[threadIdx.x], l_min_part[threadIdx.x + stride]);
      l_max_part[threadIdx.x] = fmax(l_max_part[threadIdx.x], l_max_part[threadIdx.x + stride]);
    }
    __syncthreads();
  }
  const double cut = d.rel_tol * s_max_part[0];
  for (int64_t i = threadIdx.x; i < d.k; i += blockDim.x) {
    const double v = d.values[i];
    const double s = d.eigen ? sqrt(fmax(v, 0.0)) : v;
    const bool keep = s > cut;
    d.values[i] = keep ? s : 0.0;
    if (d.inv != nullptr) d.inv[i] = keep ? 1.0 / s : 0.0;
  }
  // Same test as the CPU kernel: well conditioned iff l_min * ratio >= l_max.
  if (threadIdx.x == 0 && d.eigen && d.ill != nullptr &&
      l_min_part[0] * max_eigen_ratio < l_max_part[0])
    *d.ill = 1;
}

// One block per bias: float64 sum of squares, then dst = b / sqrt(norm + eps) in b's dtype.
__device__ __forceinline__ void store_from_double(void* p, int32_t type, int64_t off, double v) {
  switch (type) {
    case kSourceF32: static_cast<float*>(p)[off] = static_cast<float>(v); break;
    case kSourceF64: static_cast<double*>(p)[off] = v; break;
    // double -> float -> half/bfloat16, like ATen's .to() (c10::Half(double) rounds via float)
    case kSourceF16: static_cast<__half*>(p)[off] = __float2half_rn(static_cast<float>(v)); break;
    default: static_cast<__nv_bfloat16*>(p)[off] = __float2bfloat16_rn(static_cast<float>(v)); break;
  }
}

__global__ void bias_kernel(const BiasDesc* desc, double eps) {
  __shared__ double part[kSegmentThreads];
  const BiasDesc d = desc[blockIdx.x];
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < d.n; i += blockDim.x) {
    const double v = load_as_double(d.src, d.src_type, i * d.src_stride);
    sum += v * v;
  }
  part[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) part[threadIdx.x] += part[threadIdx.x + stride];
    __syncthreads();
  }
  const double denom = sqrt(sqrt(part[0]) + eps);
  for (int64_t i = threadIdx.x; i < d.n; i += blockDim.x)
    store_from_double(d.dst, d.src_type, i, load_as_double(d.src, d.src_type, i * d.src_stride) / denom);
}

int64_t tiles(int64_t total) { return (total + kTile - 1) / kTile; }

// ---- cuSOLVER parameter objects, destroyed on every return path --------------------------------
struct GesvdjParams {
  gesvdjInfo_t p = nullptr;
  ~GesvdjParams() { if (p != nullptr) cusolverDnDestroyGesvdjInfo(p); }
};
struct SyevjParams {
  syevjInfo_t p = nullptr;
  ~SyevjParams() { if (p != nullptr) cusolverDnDestroySyevjInfo(p); }
};
struct DnParams {
  cusolverDnParams_t p = nullptr;
  ~DnParams() { if (p != nullptr) cusolverDnDestroyParams(p); }
};

// Default tolerance (machine precision) and sweeps; singular values sorted in descending order
// (the default, set explicitly because the small route narrows U and V to the first k columns).
Status make_gesvdj_params(GesvdjParams& params) {
  SVS_CUSOLVER(cusolverDnCreateGesvdjInfo(&params.p));
  SVS_CUSOLVER(cusolverDnXgesvdjSetSortEig(params.p, 1));
  return Status{};
}

Status make_syevj_params(SyevjParams& params) {
  SVS_CUSOLVER(cusolverDnCreateSyevjInfo(&params.p));
  SVS_CUSOLVER(cusolverDnXsyevjSetSortEig(params.p, 1));  // ascending
  return Status{};
}

bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

}  // namespace

// ---- kernels -------------------------------------------------------------------------------------
Status pack(const PackDesc* desc, int64_t count, int64_t total, cudaStream_t stream) {
  if (count == 0 || total == 0) return Status{};
  return launch("svs::cuda::pack_kernel", pack_kernel, tiles(total), kThreads, stream, desc, count, total);
}

Status threshold_segments(const SegmentDesc* desc, int64_t count, double max_eigen_ratio,
                          cudaStream_t stream) {
  if (count == 0) return Status{};
  return launch("svs::cuda::threshold_kernel", threshold_kernel, count, kSegmentThreads, stream, desc,
                max_eigen_ratio);
}

Status scale(const ScaleDesc* desc, int64_t count, int64_t total, cudaStream_t stream) {
  if (count == 0 || total == 0) return Status{};
  return launch("svs::cuda::scale_kernel", scale_kernel, tiles(total), kThreads, stream, desc, count, total);
}

Status scale_biases(const BiasDesc* desc, int64_t count, double eps, cudaStream_t stream) {
  if (count == 0) return Status{};
  return launch("svs::cuda::bias_kernel", bias_kernel, count, kSegmentThreads, stream, desc, eps);
}

// ---- small route ---------------------------------------------------------------------------------
Status small_svd_workspace(cusolverDnHandle_t handle, const double* A, const double* S,
                           const double* U, const double* V, int batch, int* lwork) {
  GesvdjParams params;
  Status st = make_gesvdj_params(params);
  if (!st.ok()) return st;
  SVS_CUSOLVER(cusolverDnDgesvdjBatched_bufferSize(handle, CUSOLVER_EIG_MODE_VECTOR, kSmallDim,
                                                   kSmallDim, A, kSmallDim, S, U, kSmallDim, V,
                                                   kSmallDim, lwork, params.p, batch));
  return Status{};
}

Status small_svd(cusolverDnHandle_t handle, double* A, double* S, double* U, double* V,
                 double* work, int lwork, int* info, int batch) {
  GesvdjParams params;
  Status st = make_gesvdj_params(params);
  if (!st.ok()) return st;
  SVS_CUSOLVER(cusolverDnDgesvdjBatched(handle, CUSOLVER_EIG_MODE_VECTOR, kSmallDim, kSmallDim, A,
                                        kSmallDim, S, U, kSmallDim, V, kSmallDim, work, lwork, info,
                                        params.p, batch));
  return Status{};
}

// ---- the Gram routes, in float64 (double) and float32 (float) ------------------------------------
namespace {

// The typed entry points of cuSOLVER / cuBLAS, by element type.
cudaDataType real_type(const double*) { return CUDA_R_64F; }
cudaDataType real_type(const float*) { return CUDA_R_32F; }

cusolverStatus_t syevj_batched_size(cusolverDnHandle_t h, const double* A, const double* W, int* lwork,
                                    syevjInfo_t p, int batch) {
  return cusolverDnDsyevjBatched_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, kSmallDim, A,
                                            kSmallDim, W, lwork, p, batch);
}
cusolverStatus_t syevj_batched_size(cusolverDnHandle_t h, const float* A, const float* W, int* lwork,
                                    syevjInfo_t p, int batch) {
  return cusolverDnSsyevjBatched_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, kSmallDim, A,
                                            kSmallDim, W, lwork, p, batch);
}
cusolverStatus_t syevj_batched(cusolverDnHandle_t h, double* A, double* W, double* work, int lwork, int* info,
                               syevjInfo_t p, int batch) {
  return cusolverDnDsyevjBatched(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, kSmallDim, A, kSmallDim, W,
                                 work, lwork, info, p, batch);
}
cusolverStatus_t syevj_batched(cusolverDnHandle_t h, float* A, float* W, float* work, int lwork, int* info,
                               syevjInfo_t p, int batch) {
  return cusolverDnSsyevjBatched(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, kSmallDim, A, kSmallDim, W,
                                 work, lwork, info, p, batch);
}

cublasStatus_t gemm_strided(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const double* A, int lda, long long sa, const double* B, int ldb, long long sb, double* C,
                            int ldc, long long sc, int batch) {
  const double one = 1.0, zero = 0.0;
  return cublasDgemmStridedBatched(h, ta, tb, m, n, k, &one, A, lda, sa, B, ldb, sb, &zero, C, ldc, sc, batch);
}
cublasStatus_t gemm_strided(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const float* A, int lda, long long sa, const float* B, int ldb, long long sb, float* C,
                            int ldc, long long sc, int batch) {
  const float one = 1.0f, zero = 0.0f;
  return cublasSgemmStridedBatched(h, ta, tb, m, n, k, &one, A, lda, sa, B, ldb, sb, &zero, C, ldc, sc, batch);
}

template <typename T>
Status small_eigh_workspace_t(cusolverDnHandle_t handle, const T* A, const T* W, int batch, int* lwork) {
  SyevjParams params;
  Status st = make_syevj_params(params);
  if (!st.ok()) return st;
  SVS_CUSOLVER(syevj_batched_size(handle, A, W, lwork, params.p, batch));
  return Status{};
}

template <typename T>
Status small_eigh_t(cusolverDnHandle_t handle, T* A, T* W, T* work, int lwork, int* info, int batch) {
  SyevjParams params;
  Status st = make_syevj_params(params);
  if (!st.ok()) return st;
  SVS_CUSOLVER(syevj_batched(handle, A, W, work, lwork, info, params.p, batch));
  return Status{};
}

// The row-major M_b (m x n) read column-major is Y_b = M_b^T (n x m, leading dimension n).
template <typename T>
Status gram_t(cublasHandle_t handle, const T* M, int64_t m, int64_t n, int64_t batch, T* G, int64_t ldg,
              int64_t stride_g) {
  if (batch == 0) return Status{};
  if (!fits_int(m) || !fits_int(n) || !fits_int(batch) || !fits_int(ldg))
    return Status{"svs::cuda::gram (dimension exceeds int)", 0};
  const long long stride_m = static_cast<long long>(m) * n;
  if (m <= n) {
    // G = M M^T = Y^T Y  (m x m)
    SVS_CUBLAS(gemm_strided(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(m), int(m), int(n), M, int(n), stride_m, M,
                            int(n), stride_m, G, int(ldg), stride_g, int(batch)));
  } else {
    // G = M^T M = Y Y^T  (n x n)
    SVS_CUBLAS(gemm_strided(handle, CUBLAS_OP_N, CUBLAS_OP_T, int(n), int(n), int(m), M, int(n), stride_m, M,
                            int(n), stride_m, G, int(ldg), stride_g, int(batch)));
  }
  return Status{};
}

template <typename T>
Status gram_apply_t(cublasHandle_t handle, const T* M, int64_t m, int64_t n, int64_t batch, const T* Q,
                    int64_t ldq, int64_t stride_q, T* P) {
  if (batch == 0) return Status{};
  if (!fits_int(m) || !fits_int(n) || !fits_int(batch) || !fits_int(ldq))
    return Status{"svs::cuda::gram_apply (dimension exceeds int)", 0};
  const long long stride_m = static_cast<long long>(m) * n;
  if (m <= n) {
    // P = Q^T M (m x n row-major) = column-major P^T (n x m, ld n) = Y Q
    SVS_CUBLAS(gemm_strided(handle, CUBLAS_OP_N, CUBLAS_OP_N, int(n), int(m), int(m), M, int(n), stride_m, Q,
                            int(ldq), stride_q, P, int(n), stride_m, int(batch)));
  } else {
    // P = M Q (m x n row-major) = column-major P^T (n x m, ld n) = Q^T Y
    SVS_CUBLAS(gemm_strided(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(m), int(n), Q, int(ldq), stride_q, M,
                            int(n), stride_m, P, int(n), stride_m, int(batch)));
  }
  return Status{};
}

template <typename T>
Status eigh_batched_workspace_t(cusolverDnHandle_t handle, const T* A, int64_t n, const T* W, int64_t batch,
                                size_t* device_bytes, size_t* host_bytes) {
  DnParams params;
  SVS_CUSOLVER(cusolverDnCreateParams(&params.p));
  SVS_CUSOLVER(cusolverDnXsyevBatched_bufferSize(handle, params.p, CUSOLVER_EIG_MODE_VECTOR,
                                                 CUBLAS_FILL_MODE_LOWER, n, real_type(A), A, n, real_type(W), W,
                                                 real_type(A), device_bytes, host_bytes, batch));
  return Status{};
}

template <typename T>
Status eigh_batched_t(cusolverDnHandle_t handle, T* A, int64_t n, T* W, void* device_work, size_t device_bytes,
                      void* host_work, size_t host_bytes, int* info, int64_t batch) {
  if (batch == 0) return Status{};
  DnParams params;
  SVS_CUSOLVER(cusolverDnCreateParams(&params.p));
  SVS_CUSOLVER(cusolverDnXsyevBatched(handle, params.p, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n,
                                      real_type(A), A, n, real_type(W), W, real_type(A), device_work,
                                      device_bytes, host_work, host_bytes, info, batch));
  return Status{};
}

template <typename T>
Status eigh_workspace_t(cusolverDnHandle_t handle, const T* A, int64_t n, const T* W, size_t* device_bytes,
                        size_t* host_bytes) {
  DnParams params;
  SVS_CUSOLVER(cusolverDnCreateParams(&params.p));
  SVS_CUSOLVER(cusolverDnXsyevd_bufferSize(handle, params.p, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n,
                                           real_type(A), A, n, real_type(W), W, real_type(A), device_bytes,
                                           host_bytes));
  return Status{};
}

template <typename T>
Status eigh_t(cusolverDnHandle_t handle, T* A, int64_t n, T* W, void* device_work, size_t device_bytes,
              void* host_work, size_t host_bytes, int* info) {
  DnParams params;
  SVS_CUSOLVER(cusolverDnCreateParams(&params.p));
  SVS_CUSOLVER(cusolverDnXsyevd(handle, params.p, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n,
                                real_type(A), A, n, real_type(W), W, real_type(A), device_work, device_bytes,
                                host_work, host_bytes, info));
  return Status{};
}

}  // namespace

// The float64 and float32 overloads of svs_cuda.h.
#define SVS_GRAM_ROUTE_OVERLOADS(T)                                                                         \
  Status small_eigh_workspace(cusolverDnHandle_t h, const T* A, const T* W, int batch, int* lwork) {        \
    return small_eigh_workspace_t(h, A, W, batch, lwork);                                                  \
  }                                                                                                         \
  Status small_eigh(cusolverDnHandle_t h, T* A, T* W, T* work, int lwork, int* info, int batch) {           \
    return small_eigh_t(h, A, W, work, lwork, info, batch);                                                \
  }                                                                                                         \
  Status gram(cublasHandle_t h, const T* M, int64_t m, int64_t n, int64_t batch, T* G, int64_t ldg,         \
              int64_t stride_g) {                                                                           \
    return gram_t(h, M, m, n, batch, G, ldg, stride_g);                                                    \
  }                                                                                                         \
  Status gram_apply(cublasHandle_t h, const T* M, int64_t m, int64_t n, int64_t batch, const T* Q,          \
                    int64_t ldq, int64_t stride_q, T* P) {                                                  \
    return gram_apply_t(h, M, m, n, batch, Q, ldq, stride_q, P);                                           \
  }                                                                                                         \
  Status eigh_batched_workspace(cusolverDnHandle_t h, const T* A, int64_t n, const T* W, int64_t batch,     \
                                size_t* device_bytes, size_t* host_bytes) {                                 \
    return eigh_batched_workspace_t(h, A, n, W, batch, device_bytes, host_bytes);                          \
  }                                                                                                         \
  Status eigh_batched(cusolverDnHandle_t h, T* A, int64_t n, T* W, void* device_work, size_t device_bytes,   \
                      void* host_work, size_t host_bytes, int* info, int64_t batch) {                       \
    return eigh_batched_t(h, A, n, W, device_work, device_bytes, host_work, host_bytes, info, batch);      \
  }                                                                                                         \
  Status eigh_workspace(cusolverDnHandle_t h, const T* A, int64_t n, const T* W, size_t* device_bytes,      \
                        size_t* host_bytes) {                                                               \
    return eigh_workspace_t(h, A, n, W, device_bytes, host_bytes);                                         \
  }                                                                                                         \
  Status eigh(cusolverDnHandle_t h, T* A, int64_t n, T* W, void* device_work, size_t device_bytes,          \
              void* host_work, size_t host_bytes, int* info) {                                              \
    return eigh_t(h, A, n, W, device_work, device_bytes, host_work, host_bytes, info);                     \
  }
SVS_GRAM_ROUTE_OVERLOADS(double)
SVS_GRAM_ROUTE_OVERLOADS(float)
#undef SVS_GRAM_ROUTE_OVERLOADS

// ---- one thin SVD ----------------------------------------------------------------------------------
Status jacobi_svd_workspace(cusolverDnHandle_t handle, const double* X, int rows, int cols,
                            const double* S, const double* U, const double* V, int* lwork) {
  GesvdjParams params;
  Status st = make_gesvdj_params(params);
  if (!st.ok()) return st;
  SVS_CUSOLVER(cusolverDnDgesvdj_bufferSize(handle, CUSOLVER_EIG_MODE_VECTOR, /*econ=*/1, rows,
                                            cols, X, rows, S, U, rows, V, cols, lwork, params.p));
  return Status{};
}

Status jacobi_svd(cusolverDnHandle_t handle, double* X, int rows, int cols, double* S, double* U,
                  double* V, double* work, int lwork, int* info) {
  GesvdjParams params;
  Status st = make_gesvdj_params(params);
  if (!st.ok()) return st;
  SVS_CUSOLVER(cusolverDnDgesvdj(handle, CUSOLVER_EIG_MODE_VECTOR, /*econ=*/1, rows, cols, X, rows,
                                 S, U, rows, V, cols, work, lwork, info, params.p));
  return Status{};
}

Status exact_svd_workspace(cusolverDnHandle_t handle, int rows, int cols, int* lwork) {
  SVS_CUSOLVER(cusolverDnDgesvd_bufferSize(handle, rows, cols, lwork));
  return Status{};
}

Status exact_svd(cusolverDnHandle_t handle, double* X, int rows, int cols, double* S, double* U,
                 double* VT, double* work, int lwork, double* rwork, int* info) {
  SVS_CUSOLVER(cusolverDnDgesvd(handle, 'S', 'S', rows, cols, X, rows, S, U, rows, VT, cols, work,
                                lwork, rwork, info));
  return Status{};
}

}  // namespace cuda
}  // namespace svs
