// CUDA kernel of svs::refine: the entry point. It checks the inputs, plans a route per matrix
// (planner.h), cuts the call into waves by estimated scratch (wave.h: a typical model is one
// wave), runs them, and scales every bias in one launch. method="aten" runs the device-generic
// ATen route (csrc/refine_aten.cpp) on the GPU instead: the exact fallback on any GPU.
//
// Flow of one wave (wave.cpp): pack every weight into float64 scratch, float32 for the float32
// Gram routes of bf16/fp16 weights (one launch per route); run each route's decompositions
// (batched routes: one launch for all their matrices; per-matrix routes: spread over side
// streams); ONE host sync per phase reads every solver's info and flags; matrices over their
// float32 budget are redone in float64 in the next phase, and matrices that did not converge or
// are outside the Gram route's accuracy range exactly; one threshold launch applies the rank
// rule; the factors go to svs::_reconstruct.
// After the waves every result is certified (csrc/certificate.cpp) and one that fails is
// recomputed on the ATen route (certify_or_recompute). UNVERIFIED on a GPU: it compiles
// (tools/check_cuda_compiles.sh); tests/csrc/test_certificate.py runs it where a GPU is present.
#include "planner.h"
#include "precision.h"
#include "refine.h"
#include "svs_cuda.h"
#include "wave.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <tuple>
#include <utility>

namespace svs {
namespace {

namespace sc = svs::cuda;
using sc::Mat;
using sc::Method;

// method= of the CUDA kernel, in the order its error message names them, and the planner's
// Method of each; "aten" has none: it runs the device-generic ATen route instead of planning.
constexpr std::pair<const char*, std::optional<Method>> kMethods[] = {
    {"auto", Method::Auto}, {"aten", std::nullopt}, {"jacobi", Method::Jacobi},
    {"gram", Method::Gram}, {"svd", Method::Svd}};

bool source_type(at::ScalarType t, int32_t* out) {
  switch (t) {
    case at::kFloat: *out = sc::kSourceF32; return true;
    case at::kDouble: *out = sc::kSourceF64; return true;
    case at::kHalf: *out = sc::kSourceF16; return true;
    case at::kBFloat16: *out = sc::kSourceBF16; return true;
    default: return false;
  }
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
    at::Tensor dev = sc::upload(desc, device);
    sc::check(sc::scale_biases(sc::device_ptr<sc::BiasDesc>(dev), static_cast<int64_t>(desc.size()), eps,
                           c10::cuda::getCurrentCUDAStream(device.index()).stream()),
          "scaling the biases");
  }
  OptionalTensorList result;
  for (auto& b : out) result.push_back(b);
  return result;
}

// Relative error of svs::_reconstruct on CUDA for an output dtype and k = min(m, n): float64
// factors and GEMM for float64; float32 factors, the Triton GEMM's operand rounding (3xTF32 for
// float32 outputs, TF32 for half types) and float32 accumulation otherwise
// (svs_kernels/triton_ops/reconstruct.py states the elementwise bounds).
double reconstruct_error(at::ScalarType out, int64_t k) {
  const double terms = static_cast<double>(k + 2);
  if (out == at::kDouble) return terms * kEps64;
  const double operands = (out == at::kHalf || out == at::kBFloat16) ? std::ldexp(1.0, -10) : std::ldexp(1.0, -20);
  return operands + terms * std::ldexp(1.0, -23);
}

// The certificate of every result, one shape group at a time and one host sync for all (after
// applying the test hook, svs::_corrupt_next). A result that fails it is recomputed on the exact
// ATen route (which certifies its own results and raises if one fails too); its route becomes
// fallback:aten:*, and ONE warning names each such weight, its route and its residual.
void certify_or_recompute(at::TensorList weights, std::vector<at::Tensor>& outputs, Spectra& spectra,
                          const SigmaMap& map, double eps, bool check,
                          const std::optional<Corruption>& corruption) {
  std::vector<at::Tensor> scores;
  std::vector<int64_t> order;  // the weight of each row of `scores`
  for (const auto& [shape, indices] : group_by_shape(weights)) {
    const auto [rows, cols] = shape;
    std::vector<at::Tensor> a, out, s;
    std::vector<int8_t> routes;
    std::vector<Precision> precision;
    for (int64_t i : indices) {
      a.push_back(weights[i].reshape({rows, cols}).to(at::kDouble));
      out.push_back(outputs[i].view({rows, cols}).to(at::kDouble));
      s.push_back(spectra.values[i]);
      routes.push_back(spectra.routes[i]);
      const at::ScalarType dtype = outputs[i].scalar_type();
      precision.push_back(precision_of(dtype, reconstruct_error(dtype, std::min(rows, cols))));
      precision.back().decompose = decomposition_eps(routes.back());
    }
    const at::Tensor a64 = at::stack(a), s64 = at::stack(s);
    at::Tensor out64 = at::stack(out);
    for (size_t j = 0; corruption && j < indices.size(); ++j) {
      if (indices[j] != corruption->index) continue;
      for (int64_t r : corrupt(*corruption, a64, out64, s64, static_cast<int64_t>(j), map))
        outputs[indices[r]].view({rows, cols}).copy_(out64[r]);
    }
    if (!check) continue;
    scores.push_back(certify(a64, out64, s64, routes, map, precision));
    order.insert(order.end(), indices.begin(), indices.end());
  }
  if (!check) return;
  const at::Tensor host = at::cat(scores).cpu().contiguous();  // the one host sync
  std::vector<int64_t> failed;
  std::string what;
  for (size_t p = 0; p < order.size(); ++p) {
    const double* row = host.data_ptr<double>() + p * 2 * kChecks;
    const int64_t failing = failed_check(row);
    if (failing < 0) continue;
    what += std::string(failed.empty() ? "" : "; ") + "weights[" + std::to_string(order[p]) + "] (" +
            kRouteNames[spectra.routes[order[p]]] + ", " + describe_failure(row, failing) + ")";
    failed.push_back(order[p]);
  }
  if (failed.empty()) return;
  std::vector<at::Tensor> redo;
  OptionalTensorList no_biases;
  for (int64_t i : failed) {
    redo.push_back(weights[i]);
    no_biases.push_back(std::nullopt);
  }
  Spectra exact(failed.size());
  const RefineResult result =
      refine_aten(redo, no_biases, map, eps, "auto", &exact, /*certify=*/true, std::nullopt, failed);
  for (size_t j = 0; j < failed.size(); ++j) {
    outputs[failed[j]].copy_(std::get<0>(result)[j]);
    spectra.values[failed[j]] = exact.values[j];
    // aten:gram and aten:gram32 (the ATen route's float32 plan for bf16/fp16) are Gram routes
    spectra.routes[failed[j]] = exact.routes[j] == kRouteAtenSvd ? kRouteFallbackSvd : kRouteFallbackGram;
  }
  TORCH_WARN("svs.refine (CUDA): ", failed.size(), " result(s) failed the certificate and were recomputed on ",
             "the exact aten route: ", what, ". Please report this with your GPU and CUDA version; ",
             "method=\"aten\" skips the CUDA routes");
}

RefineResult refine_cuda(at::TensorList weights, const OptionalTensorList& biases,
                         c10::string_view map_view, double eps, c10::string_view method_view,
                         bool certify, Spectra* spectra) {
  const std::string map_name(map_view);
  const SigmaMap map = parse_map(map_name);  // validates; _reconstruct applies the map
  const std::string method_name(method_view);
  check_method(c10::DeviceType::CUDA, method_name);
  std::optional<Method> planned;
  for (const auto& [name, value] : kMethods) {
    if (method_name == name) planned = value;
  }
  check_inputs(weights, biases, eps);
  const std::optional<Corruption> corruption = take_corruption(weights.size());

  const at::Device device = weights[0].device();
  c10::cuda::CUDAGuard guard(device);
  if (!planned.has_value()) {  // "aten"
    RefineResult result = refine_aten(weights, biases, map, eps, "auto", spectra, certify, corruption);
    check_outputs(std::get<0>(result), map_name);
    return result;
  }
  const Method method = *planned;
  // The certificate needs every matrix's singular values: kept here when the caller wants none.
  const bool needs_spectra = certify || corruption.has_value();
  Spectra own(spectra == nullptr && needs_spectra ? weights.size() : 0);
  Spectra* found = spectra != nullptr ? spectra : (needs_spectra ? &own : nullptr);

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
    a.dtype = w.scalar_type();
    a.f64 = a.dtype == at::kDouble;
    a.float32 = float32_eligible(a.dtype);
    mats.push_back(std::move(a));
    outputs.push_back(at::empty(w.sizes(), w.options().memory_format(at::MemoryFormat::Contiguous)));
  }

  // Order by (route, shape) so that batched routes stay batched inside a wave, then cut waves.
  std::vector<int> order(mats.size());
  std::iota(order.begin(), order.end(), 0);
  std::vector<RouteCode> first_route;
  for (const Mat& a : mats) first_route.push_back(sc::plan_route(a.m, a.n, method, a.float32));
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) {
    return std::make_tuple(static_cast<int>(first_route[x]), mats[x].m, mats[x].n) <
           std::make_tuple(static_cast<int>(first_route[y]), mats[y].m, mats[y].n);
  });
  std::vector<const Mat*> wave;
  int64_t wave_bytes = 0;
  auto flush = [&]() {
    if (wave.empty()) return;
    sc::Wave(std::move(wave), method, map, device, sc::kTuning.wave_bytes - wave_bytes).run(outputs, found);
    wave.clear();
    wave_bytes = 0;
  };
  for (int i : order) {
    const int64_t bytes = sc::workspace_bytes(mats[i], first_route[i]);
    if (!wave.empty() && wave_bytes + bytes > sc::kTuning.wave_bytes) flush();
    wave.push_back(&mats[i]);
    wave_bytes += bytes;
  }
  flush();

  check_outputs(outputs, map_name);
  if (needs_spectra) certify_or_recompute(weights, outputs, *found, map, eps, certify, corruption);
  return {outputs, scale_biases(biases, eps, device)};
}

}  // namespace

TORCH_LIBRARY_IMPL(svs, CUDA, m) {
  std::vector<std::string> methods;
  for (const auto& method : kMethods) methods.push_back(method.first);
  register_methods(c10::DeviceType::CUDA, std::move(methods));
  m.impl("refine", &refine_kernel<refine_cuda>);
  m.impl("refine_with_spectra", &refine_with_spectra_kernel<refine_cuda>);
}

}  // namespace svs
