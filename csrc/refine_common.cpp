// Device-independent parts of svs::refine and the operator schema.
#include "refine.h"
#include "int_workspace.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <tuple>

namespace svs {

namespace {

// "a, b or c" (last == " or ") or "a, b, c" (last == ", ").
template <typename Names>
std::string joined(const Names& names, const char* last) {
  std::string out;
  const size_t n = std::size(names);
  size_t i = 0;
  for (const auto& name : names) {
    if (i > 0) out += (i + 1 == n) ? last : ", ";
    out += name;
    ++i;
  }
  return out;
}

std::map<c10::DeviceType, std::vector<std::string>>& methods_by_device() {
  static std::map<c10::DeviceType, std::vector<std::string>> methods;
  return methods;
}

}  // namespace

SigmaMap parse_map(const std::string& name) {
  using K = SigmaMap::Kind;
  const std::string prefix = "power:";
  if (name.rfind(prefix, 0) == 0) {
    const std::string text = name.substr(prefix.size());
    size_t used = 0;
    double p = std::numeric_limits<double>::quiet_NaN();
    try {
      p = std::stod(text, &used);
    } catch (const std::exception&) {
    }
    TORCH_CHECK_VALUE(used == text.size() && std::isfinite(p),
                      "svs.refine: map 'power:<p>' needs a finite number p, got '", name, "'");
    return {K::Power, p};
  }
  for (size_t code = 0; code < std::size(kMapNames); ++code) {
    if (static_cast<K>(code) != K::Power && name == kMapNames[code]) return {static_cast<K>(code), 1.0};
  }
  TORCH_CHECK_VALUE(false, "svs.refine: unknown map '", name, "'; expected one of ", joined(kMapNames, ", "));
}

void register_methods(c10::DeviceType device, std::vector<std::string> names) {
  methods_by_device()[device] = std::move(names);
}

void check_method(c10::DeviceType device, const std::string& method) {
  const auto it = methods_by_device().find(device);
  const std::vector<std::string> none;
  const std::vector<std::string>& names = it == methods_by_device().end() ? none : it->second;
  TORCH_CHECK_VALUE(std::find(names.begin(), names.end(), method) != names.end(), "svs.refine: method '",
                    method, "' is not available on ", c10::DeviceTypeName(device), "; expected ",
                    joined(names, " or "));
}

void check_inputs(at::TensorList weights, const OptionalTensorList& biases, double eps) {
  TORCH_CHECK_VALUE(!weights.empty(), "svs.refine: weights is empty; pass a list of one or more tensors");
  TORCH_CHECK_VALUE(biases.size() == weights.size(), "svs.refine: got ", weights.size(), " weights but ",
                    biases.size(), " biases; pass one bias (or None) per weight");
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps > 0, "svs.refine: eps must be finite and > 0, got ", eps);
  const auto device = weights[0].device();
  std::vector<at::Tensor> finite;  // one flag per tensor, read back to the host once
  std::vector<std::tuple<const char*, size_t, std::vector<int64_t>>> flagged;
  auto check_tensor = [&](const at::Tensor& t, const char* what, size_t i) {
    TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "svs.refine: ", what, "[", i, "] has dtype torch.",
                     c10::getDtypeNames(t.scalar_type()).first, "; expected float16, bfloat16, float32 or float64");
    TORCH_CHECK_VALUE(t.numel() > 0, "svs.refine: ", what, "[", i, "] is empty (shape ", t.sizes(), ")");
    TORCH_CHECK_VALUE(t.device() == device, "svs.refine: ", what, "[", i, "] is on ", t.device(),
                      " but weights[0] is on ", device, "; use one device");
    finite.push_back(at::isfinite(t).all());
    flagged.emplace_back(what, i, t.sizes().vec());
  };
  for (size_t i = 0; i < weights.size(); ++i) {
    const auto& w = weights[i];
    TORCH_CHECK_VALUE(w.dim() >= 2, "svs.refine: weights[", i, "] has shape ", w.sizes(),
                      "; SVS needs ndim >= 2 (flattened to (shape[0], -1))");
    check_tensor(w, "weights", i);
    const std::optional<at::Tensor> b = biases[i];
    if (!b.has_value()) continue;
    check_tensor(*b, "biases", i);
    TORCH_CHECK_VALUE(b->dim() == 1 && b->size(0) == w.size(0), "svs.refine: biases[", i, "] has shape ",
                      b->sizes(), "; expected [", w.size(0), "] (weights[", i, "].shape[0])");
  }
  const at::Tensor ok = at::stack(finite).cpu();
  const bool* flags = ok.data_ptr<bool>();
  for (size_t j = 0; j < flagged.size(); ++j) {
    const auto& [what, i, sizes] = flagged[j];
    TORCH_CHECK(flags[j], "svs.refine: ", what, "[", i, "] (shape ", at::IntArrayRef(sizes),
                ") contains NaN or Inf");
  }
}

void check_outputs(const std::vector<at::Tensor>& outputs, const std::string& map) {
  std::vector<at::Tensor> finite;
  for (const at::Tensor& t : outputs) finite.push_back(at::isfinite(t).all());
  const at::Tensor ok = at::stack(finite).cpu();
  const bool* flags = ok.data_ptr<bool>();
  for (size_t i = 0; i < outputs.size(); ++i) {
    TORCH_CHECK(flags[i], "svs.refine: the refined weights[", i, "] overflows ", outputs[i].scalar_type(),
                ": map '", map, "' takes its singular values past the largest ", outputs[i].scalar_type(),
                " value; refine a float32 copy instead");
  }
}

std::vector<std::pair<std::pair<int64_t, int64_t>, std::vector<int64_t>>> group_by_shape(
    at::TensorList weights) {
  std::vector<std::pair<std::pair<int64_t, int64_t>, std::vector<int64_t>>> groups;
  std::map<std::pair<int64_t, int64_t>, size_t> slot;
  for (size_t i = 0; i < weights.size(); ++i) {
    const int64_t rows = weights[i].size(0);
    const std::pair<int64_t, int64_t> shape{rows, weights[i].numel() / rows};
    auto [it, fresh] = slot.emplace(shape, groups.size());
    if (fresh) groups.push_back({shape, {}});
    groups[it->second].second.push_back(static_cast<int64_t>(i));
  }
  return groups;
}

at::Tensor apply_map(const at::Tensor& s, const at::Tensor& s_max, const at::Tensor& keep,
                     const SigmaMap& map) {
  using K = SigmaMap::Kind;
  at::Tensor f;
  switch (map.kind) {
    case K::Sqrt: f = s.sqrt(); break;
    case K::Log1p: f = s.log1p(); break;
    case K::AbsLog: f = s.log().abs(); break;
    case K::Power: f = s.pow(map.power); break;
    case K::Ones: f = at::ones_like(s); break;
    case K::Spectral: f = s / s_max; break;
    case K::Square: f = s * s; break;
    case K::Identity: f = s; break;
  }
  return at::where(keep, f, at::zeros_like(f));
}

at::Tensor scale_bias(const at::Tensor& bias, double eps) {
  const at::Tensor b = bias.to(at::kDouble);
  return (b / (b.norm() + eps).sqrt()).to(bias.scalar_type());
}

at::Tensor times_pow2(const at::Tensor& x, const at::Tensor& k) {
  const auto pow2 = [](const at::Tensor& e) {
    return at::bitwise_left_shift(e.to(at::kLong) + 1023, 52).view(at::kDouble);
  };
  const at::Tensor half = at::floor_divide(k, 2);
  return x * pow2(half) * pow2(k - half);
}

namespace {

// In place, all or nothing: the functional op computes (and certifies) every result of the call
// first, so an input error, a solver failure, an overflow or a failed certificate leaves every
// tensor as it was. The price is one copy of the weights in extra memory.
void refine_inplace(at::TensorList weights, const OptionalTensorList& biases,
                    const std::string& map, double eps, const std::string& method, bool certify) {
  static auto refine_op = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("svs::refine", "")
                              .typed<RefineResult(at::TensorList, const OptionalTensorList&,
                                                  c10::string_view, double, c10::string_view, bool)>();
  auto [new_weights, new_biases] = refine_op.call(weights, biases, map, eps, method, certify);
  for (size_t i = 0; i < weights.size(); ++i) {
    weights[i].copy_(new_weights[i]);
    const std::optional<at::Tensor> nb = new_biases[i];
    if (nb.has_value()) biases.get(i)->copy_(*nb);
  }
}

// Reference and fallback of svs::_reconstruct: one matmul per matrix. The map arrives parsed (a
// SigmaMap::Kind code and a power). The Triton grouped kernel registers itself for CUDA
// (svs_kernels/triton_ops) and takes precedence there; on CUDA tensors this fallback warns once.
void reconstruct_composite(at::TensorList u, at::TensorList s, at::TensorList vh,
                           at::TensorList out, int64_t map_code, double power) {
  TORCH_CHECK(map_code >= 0 && map_code <= static_cast<int64_t>(SigmaMap::Kind::Identity) &&
                  std::isfinite(power),
              "svs._reconstruct: map code ", map_code, " / power ", power, " out of range");
  const SigmaMap map{static_cast<SigmaMap::Kind>(map_code), power};
  TORCH_CHECK(u.size() == s.size() && s.size() == vh.size() && vh.size() == out.size(),
              "svs._reconstruct: u, s, vh and out must have the same length");
  if (!out.empty() && out[0].is_cuda()) {
    TORCH_WARN_ONCE("svs.refine: the Triton reconstruction is not registered, so the per-matrix ATen ",
                    "fallback runs on CUDA (slower); svs_kernels.backend_info() says why");
  }
  for (size_t i = 0; i < u.size(); ++i) {
    const at::Tensor& si = s[i];
    const at::Tensor s_max = si.max().reshape({1});
    const at::Tensor fs = apply_map(si, s_max, si > 0, map).to(u[i].scalar_type());
    out[i].copy_(at::matmul(u[i] * fs.unsqueeze(0), vh[i]));
  }
}

// Reached when no backend kernel matches: an empty list (no tensor to dispatch on) or a device
// this build has no kernel for. Turns the dispatcher's generic message into a clear one.
RefineResult refine_no_kernel(at::TensorList weights, const OptionalTensorList& biases,
                              c10::string_view, double eps, c10::string_view, bool) {
  check_inputs(weights, biases, eps);
  TORCH_CHECK(false, "svs.refine: this build has no kernel for ", weights[0].device().type(),
              " tensors (svs_kernels.has_cuda_kernel() tells whether CUDA was built)");
}

RefineSpectraResult refine_with_spectra_no_kernel(at::TensorList weights, const OptionalTensorList& biases,
                                                  c10::string_view map, double eps, c10::string_view method,
                                                  bool certify) {
  refine_no_kernel(weights, biases, map, eps, method, certify);  // raises
  return RefineSpectraResult();
}

// Test of int_workspace_batch (int_workspace.h) on a modelled cuSOLVER size query:
// lwork(b) = base + b * per rounded up to `align`, computed in 64 bits and wrapped to an int as
// an overflowing int would be.
int64_t int_workspace_batch_op(int64_t base, int64_t per, int64_t align, int64_t want) {
  auto lwork_of = [&](int b) {
    const int64_t exact = (base + b * per + align - 1) / align * align;
    return static_cast<int>(static_cast<uint32_t>(static_cast<uint64_t>(exact)));
  };
  return int_workspace_batch(lwork_of, want);
}

std::vector<std::string> route_names() { return {std::begin(kRouteNames), std::end(kRouteNames)}; }

std::vector<std::string> map_names() { return {std::begin(kMapNames), std::end(kMapNames)}; }

// (Kind code, power) of a map name, as the kernels parse it; raises parse_map's error.
std::tuple<int64_t, double> parse_map_op(c10::string_view name) {
  const SigmaMap map = parse_map(std::string(name));
  return {static_cast<int64_t>(map.kind), map.power};
}

// The method= values of svs::refine on a device type ("cpu", "cuda", or a device such as
// "cuda:0"): empty where this build has no kernel for it.
std::vector<std::string> method_names(c10::string_view device) {
  const auto it = methods_by_device().find(c10::Device(std::string(device)).type());
  return it == methods_by_device().end() ? std::vector<std::string>() : it->second;
}

// The spectrum of a refined weight, from its singular values before (descending, zeros below the
// rank tolerance; refine_with_spectra's spectra): f(s) sorted descending, zeros kept.
at::Tensor map_spectrum(const at::Tensor& s, c10::string_view map_name) {
  TORCH_CHECK(s.dim() == 1 && at::isFloatingType(s.scalar_type()),
              "svs._map_spectrum: expected a 1-D float tensor of singular values, got shape ", s.sizes());
  const SigmaMap map = parse_map(std::string(map_name));
  const at::Tensor sd = s.to(at::kDouble);
  const at::Tensor s_max = sd.numel() > 0 ? sd.max().reshape({1}) : at::zeros({1}, sd.options());
  return std::get<0>(apply_map(sd, s_max, sd > 0, map).sort(/*dim=*/0, /*descending=*/true));
}

}  // namespace

RefineSpectraResult with_spectra(RefineResult result, Spectra spectra) {
  auto& [weights, biases] = result;
  return {std::move(weights), std::move(biases), std::move(spectra.values),
          at::tensor(spectra.routes, at::TensorOptions().dtype(at::kChar))};
}

TORCH_LIBRARY(svs, m) {
  m.def(
      "refine(Tensor[] weights, Tensor?[] biases, str map=\"sqrt\", float eps=1e-08, "
      "str method=\"auto\", bool certify=True) -> (Tensor[], Tensor?[])");
  // certify: test every result before it is returned (csrc/certificate.cpp); a failure is an
  // error naming the weight on the CPU, and on CUDA a recomputation on the exact ATen route (one
  // warning; the route "fallback:aten:*"). False skips it, for routes a user has verified.
  // refine, and what it learned per weight: spectra[i] the singular values of weights[i] flattened
  // (float64, descending, zero below the rank tolerance, on its device), routes[i] (int8, on the
  // CPU) the code of the route that computed them (names: _route_names()).
  m.def(
      "refine_with_spectra(Tensor[] weights, Tensor?[] biases, str map=\"sqrt\", float eps=1e-08, "
      "str method=\"auto\", bool certify=True) -> (Tensor[] weights, Tensor?[] biases, Tensor[] spectra, Tensor routes)");
  m.def("_route_names() -> str[]", &route_names);
  m.def("_int_workspace_batch(int base, int per, int align, int want) -> int", &int_workspace_batch_op);
  // The map names by SigmaMap::Kind code, the (code, power) of one map name, and the method=
  // values of a device type: Python reads these lists instead of repeating them.
  m.def("_map_names() -> str[]", &map_names);
  m.def("_parse_map(str map) -> (int, float)", &parse_map_op);
  m.def("_method_names(str device) -> str[]", &method_names);
  m.def("_map_spectrum(Tensor s, str map=\"sqrt\") -> Tensor");
  m.def(
      "refine_(Tensor(a!)[] weights, Tensor(b!)?[] biases, str map=\"sqrt\", float eps=1e-08, "
      "str method=\"auto\", bool certify=True) -> ()");
  // Internal: out[i] = U_i diag(f(s_i)) Vh_i for every i, with U_i (m_i, k_i), s_i (k_i),
  // Vh_i (k_i, n_i) and out[i] a (m_i, n_i) view of the final output tensor (any float dtype).
  // f uses s_max = max(s_i); entries s == 0 map to 0 (producers zero every singular value under
  // their rank tolerance before calling this). The map comes parsed (_parse_map): map = its
  // SigmaMap::Kind code (the index of its name in _map_names()), power for "power:<p>".
  m.def("_reconstruct(Tensor[] u, Tensor[] s, Tensor[] vh, Tensor(a!)[] out, int map=0, float power=1.0) -> ()");
}

TORCH_LIBRARY_IMPL(svs, CompositeExplicitAutograd, m) {
  m.impl("refine_", [](at::TensorList weights, const OptionalTensorList& biases,
                       c10::string_view map, double eps, c10::string_view method, bool certify) {
    refine_inplace(weights, biases, std::string(map), eps, std::string(method), certify);
  });
  m.impl("_reconstruct", &reconstruct_composite);
  m.impl("refine", &refine_no_kernel);
  m.impl("refine_with_spectra", &refine_with_spectra_no_kernel);
  m.impl("_map_spectrum", &map_spectrum);
}

}  // namespace svs
