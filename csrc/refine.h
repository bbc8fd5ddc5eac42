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
// finite number p ...") as a c10::Error.
SigmaMap parse_map(const std::string& name);

// The method= values the svs::refine kernel of a device accepts, in the order its error message
// names them. Each device's kernel registers its list once, when the library loads, and checks
// method= against it; svs::_method_names(device) returns it (empty for a device without a kernel).
void register_methods(c10::DeviceType device, std::vector<std::string> names);
// Raises a ValueError "svs.refine: method 'x' is not available on CPU; expected auto, ... or ..."
// unless `method` is one of the device's registered methods.
void check_method(c10::DeviceType device, const std::string& method);

// Throws a c10::Error naming the offending index (weights[i] / biases[i]) for: an empty list,
// a bias list of another length, ndim < 2, an empty or non-float tensor, NaN/Inf, a bias that is
// not 1-D with shape[0] elements, tensors on different devices, a non-positive or non-finite eps.
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
                                    double, c10::string_view, Spectra*);
template <RefineImpl impl>
RefineResult refine_kernel(at::TensorList weights, const OptionalTensorList& biases,
                           c10::string_view map, double eps, c10::string_view method) {
  return impl(weights, biases, map, eps, method, nullptr);
}
template <RefineImpl impl>
RefineSpectraResult refine_with_spectra_kernel(at::TensorList weights, const OptionalTensorList& biases,
                                               c10::string_view map, double eps, c10::string_view method) {
  Spectra spectra(weights.size());
  RefineResult result = impl(weights, biases, map, eps, method, &spectra);
  return with_spectra(std::move(result), std::move(spectra));
}

// The ATen route (csrc/refine_aten.cpp): device-generic float64 ATen calls, so the same code is
// the CPU kernel and method="aten" of the CUDA kernel. method: "auto", "gram" or "svd". Fills
// `spectra` when it is not null.
RefineResult refine_aten(at::TensorList weights, const OptionalTensorList& biases,
                         const SigmaMap& map, double eps, const std::string& method,
                         Spectra* spectra = nullptr);

}  // namespace svs
