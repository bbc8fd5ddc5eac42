// Torch-free device side of the CUDA kernel of svs::refine: a few small kernels (packing,
// thresholding, scaling) and thin wrappers around cuSOLVER/cuBLAS. Everything takes raw device
// pointers, a handle and/or a stream; nothing here allocates or synchronises. The torch binding
// (refine_cuda.cpp) plans, allocates (PyTorch caching allocator), picks handles and streams.
//
// Layout conventions (cuSOLVER/cuBLAS are column-major, torch tensors row-major):
//   a row-major (r x c) buffer read column-major is its transpose (c x r). "Row-major M (m x n)"
//   below is a contiguous matrix at M + b * m * n for the b-th matrix of a batch.
// The decompositions run in float64, except the float32 Gram routes of bf16/fp16 weights (the
// float overloads below; see the compute-precision note in planner.h).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstddef>
#include <cstdint>

namespace svs {
namespace cuda {

// Result of a wrapper: ok() or the name of the call that failed and its status code
// (cudaError_t, cublasStatus_t or cusolverStatus_t, as `call` says).
struct Status {
  const char* call = nullptr;
  int code = 0;
  bool ok() const { return call == nullptr; }
};

// Side of the 32x32 padding of the small route (cuSOLVER's limit for gesvdjBatched/syevjBatched).
constexpr int kSmallDim = 32;

enum SourceType : int32_t { kSourceF32 = 0, kSourceF64 = 1, kSourceF16 = 2, kSourceBF16 = 3 };

// Copies source (rows x cols, any strides, any float dtype) into a float64 (dst_f32 == 0) or
// float32 (dst_f32 == 1) destination region of dst_rows x dst_cols elements (>= rows x cols),
// writing zeros outside rows x cols. Element (r, c) of the source goes to
// dst[r * dst_stride_r + c * dst_stride_c].
struct PackDesc {
  const void* src;
  void* dst;
  int64_t src_stride_r, src_stride_c;
  int64_t dst_stride_r, dst_stride_c;
  int64_t rows, cols;
  int64_t dst_rows, dst_cols;
  int64_t begin;  // exclusive prefix sum of dst_rows * dst_cols over the descriptor list
  int32_t src_type;  // SourceType
  int32_t dst_f32 = 0;
};

// Rank threshold of one matrix's spectrum (k values at `values`, stride 1), in place.
//   eigen == 0: values are singular values s.
//   eigen == 1: values are eigenvalues l of the Gram matrix; s = sqrt(max(l, 0)) is written back.
// Then every s <= rel_tol * max(s) becomes 0. If inv != nullptr, inv[i] = 1 / s[i] for the kept
// values and 0 otherwise. If ill != nullptr (eigen mode), *ill = 1 when min(l) * max_eigen_ratio
// < max(l) (the Gram route's accuracy range is exceeded), else it is left untouched.
struct SegmentDesc {
  double* values;
  double* inv;
  int* ill;
  int64_t k;
  double rel_tol;
  int32_t eigen;
  int32_t unused = 0;
};

// Multiplies row r (by_row = 1) or column c (by_row = 0) of the row-major (rows x cols) matrix p
// (float64, or float32 when p_f32 == 1) by scale[r] / scale[c].
struct ScaleDesc {
  void* p;
  const double* scale;
  int64_t rows, cols;
  int64_t begin;  // exclusive prefix sum of rows * cols
  int32_t by_row;
  int32_t p_f32 = 0;
};

// The bias rule of svs::scale_bias (refine.h): dst = b / sqrt(||b||_2 + eps), computed in float64,
// written in the bias dtype (src_type, SourceType) to the contiguous dst.
struct BiasDesc {
  const void* src;
  void* dst;
  int64_t n;
  int64_t src_stride;
  int32_t src_type;
  int32_t unused = 0;
};

// ---- kernels (one launch each for the whole descriptor list; descriptors live on the device) ----
Status pack(const PackDesc* desc, int64_t count, int64_t total_elements, cudaStream_t stream);
Status threshold_segments(const SegmentDesc* desc, int64_t count, double max_eigen_ratio,
                          cudaStream_t stream);
Status scale(const ScaleDesc* desc, int64_t count, int64_t total_elements, cudaStream_t stream);
Status scale_biases(const BiasDesc* desc, int64_t count, double eps, cudaStream_t stream);

// ---- small route: batch of 32x32 column-major matrices, one gesvdjBatched ----
// A (batch x 32 x 32, destroyed), S (batch x 32, descending), U, V (batch x 32 x 32,
// column-major, A_b = U_b diag(S_b) V_b^T), info (batch). `lwork` is in doubles.
Status small_svd_workspace(cusolverDnHandle_t handle, const double* A, const double* S,
                           const double* U, const double* V, int batch, int* lwork);
Status small_svd(cusolverDnHandle_t handle, double* A, double* S, double* U, double* V,
                 double* work, int lwork, int* info, int batch);

// ---- padded Gram route: batch of 32x32 symmetric matrices, one syevjBatched ----
// A (batch x 32 x 32) is overwritten by the eigenvectors (column-major), W (batch x 32) gets the
// eigenvalues in ascending order, info (batch).
Status small_eigh_workspace(cusolverDnHandle_t handle, const double* A, const double* W, int batch,
                            int* lwork);
Status small_eigh(cusolverDnHandle_t handle, double* A, double* W, double* work, int lwork,
                  int* info, int batch);
Status small_eigh_workspace(cusolverDnHandle_t handle, const float* A, const float* W, int batch,
                            int* lwork);
Status small_eigh(cusolverDnHandle_t handle, float* A, float* W, float* work, int lwork, int* info,
                  int batch);

// ---- Gram route helpers (cuBLAS DGEMM, FP64 tensor cores on sm_90; SGEMM for float, in the
// handle's default math mode: full float32, no TF32) ----
// k = min(m, n). G_b (k x k, column-major, leading dimension ldg, at G + b * stride_g) =
// M_b M_b^T if m <= n ("wide") else M_b^T M_b, for the row-major M_b (m x n) at M + b * m * n.
Status gram(cublasHandle_t handle, const double* M, int64_t m, int64_t n, int64_t batch,
            double* G, int64_t ldg, int64_t stride_g);
// Q_b: k x k column-major (leading dimension ldq, at Q + b * stride_q), the eigenvectors of G_b.
// wide (m <= n): P_b = Q_b^T M_b, row-major (k x n).  tall: P_b = M_b Q_b, row-major (m x k).
// Either way P_b has m * n elements and sits at P + b * m * n.
Status gram_apply(cublasHandle_t handle, const double* M, int64_t m, int64_t n, int64_t batch,
                  const double* Q, int64_t ldq, int64_t stride_q, double* P);
Status gram(cublasHandle_t handle, const float* M, int64_t m, int64_t n, int64_t batch, float* G,
            int64_t ldg, int64_t stride_g);
Status gram_apply(cublasHandle_t handle, const float* M, int64_t m, int64_t n, int64_t batch,
                  const float* Q, int64_t ldq, int64_t stride_q, float* P);

// ---- batched symmetric eigensolver for one shape (cusolverDnXsyevBatched, any n) ----
// A (batch x n x n, lda = n) overwritten by eigenvectors, W (batch x n) ascending, info (batch).
// Requires n * n * batch <= INT32_MAX (the caller splits larger batches).
Status eigh_batched_workspace(cusolverDnHandle_t handle, const double* A, int64_t n, const double* W,
                              int64_t batch, size_t* device_bytes, size_t* host_bytes);
Status eigh_batched(cusolverDnHandle_t handle, double* A, int64_t n, double* W, void* device_work,
                    size_t device_bytes, void* host_work, size_t host_bytes, int* info,
                    int64_t batch);
Status eigh_batched_workspace(cusolverDnHandle_t handle, const float* A, int64_t n, const float* W,
                              int64_t batch, size_t* device_bytes, size_t* host_bytes);
Status eigh_batched(cusolverDnHandle_t handle, float* A, int64_t n, float* W, void* device_work,
                    size_t device_bytes, void* host_work, size_t host_bytes, int* info,
                    int64_t batch);

// ---- one symmetric eigensolve (cusolverDnXsyevd), for Gram matrices too large to batch ----
Status eigh_workspace(cusolverDnHandle_t handle, const double* A, int64_t n, const double* W,
                      size_t* device_bytes, size_t* host_bytes);
Status eigh(cusolverDnHandle_t handle, double* A, int64_t n, double* W, void* device_work,
            size_t device_bytes, void* host_work, size_t host_bytes, int* info);
Status eigh_workspace(cusolverDnHandle_t handle, const float* A, int64_t n, const float* W,
                      size_t* device_bytes, size_t* host_bytes);
Status eigh(cusolverDnHandle_t handle, float* A, int64_t n, float* W, void* device_work,
            size_t device_bytes, void* host_work, size_t host_bytes, int* info);

// ---- one thin SVD of a tall column-major X (rows >= cols, leading dimension rows) ----
// Jacobi (gesvdj, econ): X = U diag(S) V^T, U rows x cols (ld rows), V cols x cols (ld cols).
Status jacobi_svd_workspace(cusolverDnHandle_t handle, const double* X, int rows, int cols,
                            const double* S, const double* U, const double* V, int* lwork);
Status jacobi_svd(cusolverDnHandle_t handle, double* X, int rows, int cols, double* S, double* U,
                  double* V, double* work, int lwork, int* info);
// Exact (QR-based gesvd, jobu = jobvt = 'S'): X = U diag(S) VT, U rows x cols (ld rows),
// VT cols x cols (ld cols). rwork: cols doubles.
Status exact_svd_workspace(cusolverDnHandle_t handle, int rows, int cols, int* lwork);
Status exact_svd(cusolverDnHandle_t handle, double* X, int rows, int cols, double* S, double* U,
                 double* VT, double* work, int lwork, double* rwork, int* info);

}  // namespace cuda
}  // namespace svs
