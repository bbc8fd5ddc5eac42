// Shared pieces of the svs::refine operator: input checks, the sigma-map, shape grouping and the
// bias rule. Every device kernel uses these, so the semantics live in one place.
#pragma once

#include <ATen/ATen.h>

#include "constants.h"

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace svs {

using OptionalTensorList = c10::List<std::optional<at::Tensor>>;
using RefineResult = std::tuple<std::vector<at::Tensor>, OptionalTensorList>;

// f applied to the singular values. Singular values at or below the rank threshold are treated
// as exact zeros by every map: the null space of W defines no direction to scale.
struct SigmaMap {
  enum class Kind { Sqrt, Log1p, AbsLog, Power, Ones, Spectral, Square, Identity };
  Kind kind;
  double power = 1.0;  // only for Kind::Power
};

// The name of each map, by Kind code: what map= takes, "power:<p>" standing for "power:" and a
// finite number. The only list of them: parse_map reads it, svs::_map_names returns it to Python
// (svs.MAPS), and the Triton kernels take the code (svs::_parse_map) as a compile-time constant.
constexpr const char* kMapNames[] = {"sqrt", "log1p",    "abslog", "power:<p>",
                                     "ones", "spectral", "square", "identity"};
static_assert(sizeof(kMapNames) / sizeof(kMapNames[0]) == static_cast<size_t>(SigmaMap::Kind::Identity) + 1,
              "one name per SigmaMap::Kind");

// Raises "svs.refine: unknown map ..." (or, for "power:" and no finite number, "... needs a
// finite number p ...") as a c10::ValueError (Python: ValueError).
SigmaMap parse_map(const std::string& name);

// The method= values the svs::refine kernel of a device accepts, in the order its error message
// names them. Each device's kernel registers its list once, when the library loads, and checks
// method= against it; svs::_method_names(device) returns it (empty for a device without a kernel).
void register_methods(c10::DeviceType device, std::vector<std::string> names);
// Raises a ValueError "svs.refine: method 'x' is not available on CPU; expected auto, ... or ..."
// unless `method` is one of the device's registered methods.
void check_method(c10::DeviceType device, const std::string& method);

// Raises, naming the offending index (weights[i] / biases[i]): a TypeError for a non-float
// tensor; a ValueError for an empty list, a bias list of another length, ndim < 2, an empty
// tensor, a bias that is not 1-D with shape[0] elements, tensors on different devices, a
// non-positive or non-finite eps; a RuntimeError for NaN/Inf (c10::TypeError / ValueError / Error).
void check_inputs(at::TensorList weights, const OptionalTensorList& biases, double eps);

// Throws naming weights[i] when a refined weight is not finite: the inputs are, so the map took a
// singular value past the output dtype's range (e.g. "square" in float16). One host sync.
void check_outputs(const std::vector<at::Tensor>& outputs, const std::string& map);

// Indices of the weights grouped by their flattened (rows, cols) shape, in first-seen order of shape.
std::vector<std::pair<std::pair<int64_t, int64_t>, std::vector<int64_t>>> group_by_shape(
    at::TensorList weights);

// f(s) for a batch of singular values s (..., k) whose per-matrix largest value is s_max (..., 1);
// zero where keep is false.
at::Tensor apply_map(const at::Tensor& s, const at::Tensor& s_max, const at::Tensor& keep,
                     const SigmaMap& map);

// b / sqrt(||b||_2 + eps), computed in float64, returned in b's dtype.
at::Tensor scale_bias(const at::Tensor& bias, double eps);

// x * 2^k (float64) for an integer-valued tensor k, |k| <= 1074: exact unless the result leaves
// the normal range, in two factors built from their bits, so that every k a float64 can need has
// representable ones. The exact scaling of the routes (ATen and CUDA Gram).
at::Tensor times_pow2(const at::Tensor& x, const at::Tensor& k);

// What a call learned per weight (svs::refine_with_spectra): the singular values of the flattened
// weight (float64, descending, zero below the rank tolerance, on the weight's device) and the
// RouteCode that computed them.
struct Spectra {
  std::vector<at::Tensor> values;
  std::vector<int8_t> routes;
  explicit Spectra(size_t count) : values(count), routes(count, 0) {}
};
using RefineSpectraResult =
    std::tuple<std::vector<at::Tensor>, OptionalTensorList, std::vector<at::Tensor>, at::Tensor>;
RefineSpectraResult with_spectra(RefineResult result, Spectra spectra);

// The kernels of svs::refine and svs::refine_with_spectra of one device, from its
// implementation (which fills `spectra` when it is not null).
using RefineImpl = RefineResult (*)(at::TensorList, const OptionalTensorList&, c10::string_view,
                                    double, c10::string_view, bool, Spectra*);
template <RefineImpl impl>
RefineResult refine_kernel(at::TensorList weights, const OptionalTensorList& biases,
                           c10::string_view map, double eps, c10::string_view method, bool certify) {
  return impl(weights, biases, map, eps, method, certify, nullptr);
}
template <RefineImpl impl>
RefineSpectraResult refine_with_spectra_kernel(at::TensorList weights, const OptionalTensorList& biases,
                                               c10::string_view map, double eps, c10::string_view method,
                                               bool certify) {
  Spectra spectra(weights.size());
  RefineResult result = impl(weights, biases, map, eps, method, certify, &spectra);
  return with_spectra(std::move(result), std::move(spectra));
}

// ---- The certificate (csrc/certificate.cpp) -----------------------------------------------------
// A cheap a-posteriori test of every result W' against its weight W and the singular values s
// the route reports: s sorted and >= 0, sum s^2 = ||W||^2, sum f(s)^2 = ||W'||^2,
// <W', W> = sum f(s) s, and W' W^T, W^T W' symmetric (random probes). certificate.cpp states
// the tolerances, their false-alarm bound and what the test cannot see.

// Names of the checks, in the order of certify()'s columns (svs::_certificate_checks).
constexpr const char* kCheckNames[] = {"order", "energy", "norm", "inner", "left-symmetry", "right-symmetry"};
constexpr int64_t kChecks = sizeof(kCheckNames) / sizeof(kCheckNames[0]);

// The rounding a result went through, per matrix: unit roundoff and subnormal spacing of the
// output dtype (precision_of), and the relative error of the reconstruction U f(S) V^T
// (ATen route: (k + 2) eps64; CUDA: its float32 / TF32 factors and GEMM).
// decompose: the unit roundoff the decomposition worked in (float64, or float32 on the float32
// routes of precision.h), which scales the certificate's model of the decomposition's error.
struct Precision {
  double unit = 0.0, tiny = 0.0, reconstruct = 0.0, decompose = kEps64;
};
Precision precision_of(at::ScalarType output, double reconstruct);

// a, out: (B, m, n) float64, the weights and their results (as returned, converted to float64);
// s: (B, k) float64, each matrix's reported singular values; routes: the RouteCode of each.
// Returns (B, 2 * kChecks) float64 on the CPU: the residual of each check, then its tolerance.
// A matrix passes when every residual <= its tolerance (a NaN residual fails). One host sync.
at::Tensor certify(const at::Tensor& a, const at::Tensor& out, const at::Tensor& s,
                   const std::vector<int8_t>& routes, const SigmaMap& map,
                   const std::vector<Precision>& precision);

// The index of the first failing check of a row of certify()'s result (read on the host), or -1.
int64_t failed_check(const double* row);
// "left-symmetry residual 3.1e-01 > tolerance 2.2e-06" for that check of the row.
std::string describe_failure(const double* row, int64_t check);

// Test hook (svs::_corrupt_next, tests only): the next svs::refine call corrupts the result of
// weights[index] the way a bug would, before its certificate: "transpose" (the result read with
// the other layout: V f(S) U^T for a square matrix), "reverse" / "permute" (f applied to the
// singular values reversed / rotated by one), "map" (another map), "unconverged" (right singular
// vectors off by noise of relative size 0.3), "swap" (exchanged with the next weight of its
// chunk: of its shape and dtype, and on the CPU, for small matrices, of its thread's share).
struct Corruption {
  std::string kind;
  int64_t index = 0;
};
// The armed corruption, disarming it (each refine kernel takes it once per call).
std::optional<Corruption> take_corruption(size_t weight_count);
// Applies c to row j of the float64 results `out` (B, m, n) of the weights `a`, whose reported
// singular values are `s` (B, k). Returns the rows it changed.
std::vector<int64_t> corrupt(const Corruption& c, const at::Tensor& a, at::Tensor& out, const at::Tensor& s,
                             int64_t j, const SigmaMap& map);

// The ATen route (csrc/refine_aten.cpp): device-generic float64 ATen calls, so the same code is
// the CPU kernel and method="aten" of the CUDA kernel. method: "auto", "gram" or "svd". Fills
// `spectra` when it is not null. With `certify`, every result is certified after its chunk and
// a failure raises naming the weight; `corruption` (test hook) is applied before that. Errors
// name weights[i] as weights[caller_index[i]] when caller_index is given (a call on a subset).
RefineResult refine_aten(at::TensorList weights, const OptionalTensorList& biases,
                         const SigmaMap& map, double eps, const std::string& method,
                         Spectra* spectra = nullptr, bool certify = true,
                         const std::optional<Corruption>& corruption = std::nullopt,
                         const std::vector<int64_t>& caller_index = {});

}  // namespace svs
