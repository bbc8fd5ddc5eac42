// The ATen route of svs::refine: the CPU kernel, and method="aten" of the CUDA kernel (the exact
// fallback a user can take on any GPU, and the same-device reference of the GPU tests).
// Everything is computed in float64 with device-generic ATen calls, one batched call per group of
// equal (rows, cols), in chunks that bound the extra memory.
//
// Routes (method=):
//   "svd"  : thin SVD, W' = U f(S) V^T.
//   "gram" : eigh of the float64 Gram matrix on the short side G = M M^T (or M^T M),
//            W' = Q g(L) Q^T M with g(l) = f(sqrt l) / sqrt l. About 3.5x faster than "svd" on
//            CPU; its error grows like eps64 * kappa^1.5, so it is exact to ~1e-10 for kappa <= 1e4.
//   "auto" : "gram", and "svd" for every matrix whose Gram eigenvalues span more than
//            kGramMaxEigenRatio (constants.h): ill-conditioned or rank-deficient matrices.
//            For bfloat16/float16 weights, first the float32 Gram route ("aten:gram32") where
//            its error bound allows (precision.h), the float64 routes for the others.
#include "precision.h"
#include "refine.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <optional>

namespace svs {
namespace {

constexpr int64_t kChunkElements = int64_t{1} << 26;  // 512 MiB of float64 per batched call

// CPU: chunks whose short side is at most this run one per thread (refine_aten), where LAPACK's
// own threading does not pay. svs::_cpu_spread_max_side changes it (benchmarks, tests); 0 turns
// spreading off.
constexpr int64_t kCpuSpreadMaxSide = 512;
std::atomic<int64_t> spread_side{kCpuSpreadMaxSide};
int64_t spread_max_side() { return spread_side.load(); }

// A refined batch, the singular values of each matrix (descending, zero below the rank
// tolerance) and the RouteCode of each.
struct Refined {
  at::Tensor out, spectra, routes;
};

// Entries within 2^+-kUnscaledRange need no scaling: the Gram matrix (squares summed over fewer
// than 2^31 terms) and every map's result stay far inside float64's range (2^+-1022), so the common
// case skips the scaling passes.
constexpr int64_t kUnscaledRange = 200;

// An even exponent k (..., 1, 1) with max |a_ij| in [2^(k-2), 2^k) per matrix (0 for a zero
// matrix), or none when every matrix of the batch is within 2^+-kUnscaledRange. The routes
// decompose a * 2^-k and unscale, as LAPACK's SVD scales: the Gram matrix of a float64 matrix near
// 1e-200 or 1e+200 would underflow to zero or overflow to inf. Even, so that sqrt scales back by
// an exact power of two.
std::optional<at::Tensor> scale_exponent(const at::Tensor& a) {
  const at::Tensor k = std::get<1>(at::frexp(a.abs().amax({-2, -1}, /*keepdim=*/true))).to(at::kLong);
  if (k.numel() == 0 || k.abs().max().item<int64_t>() <= kUnscaledRange) return std::nullopt;
  return k + at::remainder(k, 2);
}

// The degree d of a map homogeneous in s (f(c s) = c^d f(s)), or none (log1p, abslog). Those maps
// are applied to the scaled singular values and the result scaled back once by 2^(k d), so that it
// is exact wherever it is in range, even where s itself would be subnormal; the others take the
// unscaled s.
std::optional<double> map_degree(const SigmaMap& map) {
  switch (map.kind) {
    case SigmaMap::Kind::Sqrt: return 0.5;
    case SigmaMap::Kind::Power: return map.power;
    case SigmaMap::Kind::Ones:
    case SigmaMap::Kind::Spectral: return 0.0;
    case SigmaMap::Kind::Square: return 2.0;
    case SigmaMap::Kind::Identity: return 1.0;
    default: return std::nullopt;
  }
}

// out * 2^(k d) per matrix; the exponent is clamped to where the result has surely left float64's
// range (out is O(1) in the scaled domain), so the power-of-two factors stay representable.
at::Tensor unscale_output(const at::Tensor& out, const at::Tensor& k, double d) {
  const at::Tensor kd = (k.to(at::kDouble) * d).clamp(-2044, 2046);
  const at::Tensor whole = at::floor(kd);
  return times_pow2(out, whole.to(at::kLong)) * at::exp2(kd - whole);
}

Refined refine_svd(const at::Tensor& a_in, const SigmaMap& map) {
  const std::optional<at::Tensor> k = scale_exponent(a_in);
  const at::Tensor a = k ? times_pow2(a_in, -*k) : a_in;
  auto [u, s_scaled, vh] = at::linalg_svd(a, /*full_matrices=*/false);
  const at::Tensor s = k ? times_pow2(s_scaled, k->squeeze(-1)) : s_scaled;
  // The rank test in the scaled domain: s may overflow.
  const at::Tensor keep = s_scaled > s_scaled.narrow(-1, 0, 1) * rank_tolerance(a.size(-2), a.size(-1), kEps64);
  const std::optional<double> degree = map_degree(map);
  const at::Tensor& s_map = degree ? s_scaled : s;
  const at::Tensor out = at::matmul(u * apply_map(s_map, s_map.narrow(-1, 0, 1), keep, map).unsqueeze(-2), vh);
  return {degree && k ? unscale_output(out, *k, *degree) : out, at::where(keep, s, at::zeros_like(s)),
          at::full({a.size(0)}, kRouteAtenSvd, at::kChar)};
}

// Also returns, per matrix, whether its conditioning is within the Gram route's accuracy range.
std::pair<Refined, at::Tensor> refine_gram(const at::Tensor& a_in, const SigmaMap& map) {
  const std::optional<at::Tensor> k = scale_exponent(a_in);
  const at::Tensor a = k ? times_pow2(a_in, -*k) : a_in;  // W' below is linear in a: g uses the scaled s
  const bool wide = a.size(-2) <= a.size(-1);
  const at::Tensor at_ = a.mT();
  auto [l, q] = at::linalg_eigh(wide ? at::matmul(a, at_) : at::matmul(at_, a));
  const at::Tensor l_max = l.narrow(-1, l.size(-1) - 1, 1);
  const at::Tensor well_conditioned =
      (l.narrow(-1, 0, 1) * kGramMaxEigenRatio >= l_max).squeeze(-1);
  const at::Tensor s_scaled = l.clamp_min(0).sqrt();
  const at::Tensor s = k ? times_pow2(s_scaled, k->squeeze(-1)) : s_scaled;
  const at::Tensor keep =
      s_scaled > s_scaled.narrow(-1, s.size(-1) - 1, 1) * gram_rank_tolerance(a.size(-2), a.size(-1));
  const std::optional<double> degree = map_degree(map);
  const at::Tensor& s_map = degree ? s_scaled : s;
  const at::Tensor g = (apply_map(s_map, s_map.narrow(-1, s.size(-1) - 1, 1), keep, map) /
                        at::where(keep, s_scaled, at::ones_like(s)))
                           .unsqueeze(-2);
  const at::Tensor qt = q.mT();
  at::Tensor out = wide ? at::matmul(q * g, at::matmul(qt, a)) : at::matmul(at::matmul(a, q) * g, qt);
  if (degree && k) out = unscale_output(out, *k, *degree);
  return {{out, at::where(keep, s, at::zeros_like(s)).flip(-1), at::full({a.size(0)}, kRouteAtenGram, at::kChar)},
          well_conditioned};
}

// The float32 Gram route (precision.h) of a batch a (B, m, n) float64 whose entries are in
// gram32_in_range. W' = P M (or M P) with P = Q g(L) Q^T: 2k^3 + 2k^2 max(m, n) flops for the
// product instead of 4k^2 max(m, n). Also returns each matrix's error bound (gram32_error_bound).
std::pair<Refined, at::Tensor> refine_gram32(const at::Tensor& a64, const SigmaMap& map) {
  const at::Tensor a = a64.to(at::kFloat);
  const bool wide = a.size(-2) <= a.size(-1);
  auto [l, q] = at::linalg_eigh(wide ? at::matmul(a, a.mT()) : at::matmul(a.mT(), a));
  const at::Tensor bound = gram32_error_bound(l, map);
  const int64_t k = l.size(-1);
  const at::Tensor s = l.clamp_min(0).sqrt();
  const at::Tensor keep = s > 0;  // every value of a matrix within budget (precision.h)
  const at::Tensor g = apply_map(s, s.narrow(-1, k - 1, 1), keep, map) / at::where(keep, s, at::ones_like(s));
  const at::Tensor p = at::matmul(q * g.unsqueeze(-2), q.mT());
  const at::Tensor out = wide ? at::matmul(p, a) : at::matmul(a, p);
  return {{out.to(at::kDouble), at::where(keep, s, at::zeros_like(s)).to(at::kDouble).flip(-1),
           at::full({a.size(0)}, kRouteAtenGram32, at::kChar)},
          bound};
}

// Rows `rows` of `into` replaced by `part`'s (rows on a's device).
void merge(Refined& into, const at::Tensor& rows, const Refined& part) {
  into.out.index_copy_(0, rows, part.out);
  into.spectra.index_copy_(0, rows, part.spectra);
  into.routes.index_copy_(0, rows.cpu(), part.routes);
}

// The float64 routes of method= ("auto": Gram, with SVD for ill-conditioned matrices).
Refined refine_batch64(const at::Tensor& a, const SigmaMap& map, const std::string& method) {
  if (method == "svd") return refine_svd(a, map);
  auto [refined, well_conditioned] = refine_gram(a, map);
  if (method == "gram") return refined;
  const at::Tensor redo = (~well_conditioned).nonzero().squeeze(-1);
  if (redo.numel() > 0) merge(refined, redo, refine_svd(a.index_select(0, redo), map));
  return refined;
}

// A batch of weights of dtype `output`: under "auto", a bfloat16/float16 batch takes the float32
// Gram route where it is in range and its bound allows, the float64 routes elsewhere.
Refined refine_batch(const at::Tensor& a, const SigmaMap& map, const std::string& method, at::ScalarType output) {
  if (method != "auto" || !float32_eligible(output)) return refine_batch64(a, map, method);
  const at::Tensor fast = gram32_in_range(a).nonzero().squeeze(-1);
  if (fast.numel() == 0) return refine_batch64(a, map, method);
  auto [refined, bound] = refine_gram32(a.index_select(0, fast), map);
  const at::Tensor within = bound <= kFloat32Budget * unit_roundoff(output);
  if (fast.numel() == a.size(0) && within.all().item<bool>()) return refined;
  at::Tensor kept = at::zeros({a.size(0)}, within.options());
  kept.index_put_({fast}, within);
  Refined all{at::empty_like(a), at::empty({a.size(0), refined.spectra.size(-1)}, refined.spectra.options()),
              at::empty({a.size(0)}, refined.routes.options())};
  merge(all, fast, refined);
  const at::Tensor redo = (~kept).nonzero().squeeze(-1);
  merge(all, redo, refine_batch64(a.index_select(0, redo), map, method));
  return all;
}

// group_by_shape, each group split by dtype (the precision plan is per output dtype).
std::vector<std::pair<std::pair<int64_t, int64_t>, std::vector<int64_t>>> group_by_shape_and_dtype(
    at::TensorList weights) {
  std::vector<std::pair<std::pair<int64_t, int64_t>, std::vector<int64_t>>> groups;
  for (const auto& [shape, indices] : group_by_shape(weights)) {
    std::map<at::ScalarType, size_t> slot;
    for (int64_t i : indices) {
      auto [it, fresh] = slot.emplace(weights[i].scalar_type(), groups.size());
      if (fresh) groups.push_back({shape, {}});
      groups[it->second].second.push_back(i);
    }
  }
  return groups;
}

// Certifies one chunk's results (certificate.cpp): a failure raises naming the weight, so
// nothing of the call is returned. It tests the float64 results before their cast to the output
// dtype (a library call that rounds to nearest): no conversion pass, and a tolerance without
// that rounding, so it sees errors down to ~1e-12 whatever the output dtype.
void certify_chunk(const at::Tensor& a, const std::vector<at::Tensor>& outputs, const Refined& refined,
                   const SigmaMap& map, const std::vector<int64_t>& index) {
  const int64_t rows = a.size(1), cols = a.size(2), k = std::min(rows, cols);
  const at::Tensor routes = refined.routes.contiguous();
  const std::vector<int8_t> codes(routes.data_ptr<int8_t>(), routes.data_ptr<int8_t>() + routes.numel());
  std::vector<Precision> precision;
  for (int8_t code : codes) {
    const double u = decomposition_eps(code);
    precision.push_back(Precision{0.0, 0.0, (k + 2) * u, u});
  }
  const at::Tensor scores = certify(a, refined.out, refined.spectra, codes, map, precision).cpu().contiguous();
  for (size_t j = 0; j < index.size(); ++j) {
    const double* row = scores.data_ptr<double>() + j * 2 * kChecks;
    const int64_t check = failed_check(row);
    // A result past its dtype's range is check_outputs' error (it names the map), not a bug.
    if (check < 0 || !at::isfinite(outputs[j]).all().item<bool>()) continue;
    TORCH_CHECK(false, "svs.refine: the result for weights[", index[j], "] (", rows, "x", cols, ", route ",
                kRouteNames[codes[j]], ") fails its certificate: ", describe_failure(row, check),
                ". This is a bug of svs-kernels; please report it. certify=False skips the check");
  }
}

// Weights of one shape and dtype decomposed by one batched call: at most kChunkElements entries
// (of float64) together (plan_chunks).
struct Chunk {
  int64_t rows, cols;
  at::ScalarType output;
  std::vector<int64_t> indices;
  double cost;  // k^2 max(m, n) per matrix, summed: the order of the flops of either route
};
using Chunks = std::vector<Chunk>;

// The chunks of a call, largest first. On the CPU a group of small matrices is cut into one piece
// per thread only where it would hold up the queue (more than 1 / (2 threads) of the small
// matrices' cost): many small groups spread well whole, and each extra piece costs a batched
// call's overhead (measured: cutting every group made tiny-batch 4 % slower).
Chunks plan_chunks(at::TensorList weights) {
  Chunks chunks;
  const int64_t threads = weights[0].is_cpu() ? at::get_num_threads() : 1;
  const auto small = [](int64_t rows, int64_t cols) { return std::min(rows, cols) <= spread_max_side(); };
  const auto groups = group_by_shape_and_dtype(weights);
  auto cost_of = [](int64_t rows, int64_t cols) {
    const double k = static_cast<double>(std::min(rows, cols));
    return k * k * std::max(rows, cols);
  };
  double small_cost = 0;
  for (const auto& [shape, indices] : groups)
    if (small(shape.first, shape.second)) small_cost += cost_of(shape.first, shape.second) * indices.size();
  for (const auto& [shape, indices] : groups) {
    const auto [rows, cols] = shape;
    const int64_t count = static_cast<int64_t>(indices.size());
    const double cost = cost_of(rows, cols);
    int64_t per_chunk = std::max<int64_t>(1, kChunkElements / (rows * cols));
    if (small(rows, cols) && cost * count * 2 * threads > small_cost)
      per_chunk = std::min(per_chunk, (count + threads - 1) / threads);
    for (int64_t start = 0; start < count; start += per_chunk) {
      const int64_t stop = std::min(count, start + per_chunk);
      chunks.push_back({rows, cols, weights[indices[0]].scalar_type(),
                        std::vector<int64_t>(indices.begin() + start, indices.begin() + stop), cost * (stop - start)});
    }
  }
  std::stable_sort(chunks.begin(), chunks.end(), [](const Chunk& x, const Chunk& y) { return x.cost > y.cost; });
  return chunks;
}

// Decomposes, certifies and stores (out_weights, spectra: each chunk writes its own indices) one chunk.
void refine_chunk(const Chunk& c, at::TensorList weights, const SigmaMap& map, const std::string& method,
                  Spectra* spectra, bool certify, const std::optional<Corruption>& corruption,
                  const std::vector<int64_t>& caller_index, std::vector<at::Tensor>& out_weights) {
  // The index an error message gives weights[i]: the caller's, or i itself.
  const auto named = [&](int64_t i) { return caller_index.empty() ? i : caller_index[i]; };
  std::vector<at::Tensor> mats;
  for (int64_t i : c.indices) mats.push_back(weights[i].reshape({c.rows, c.cols}).to(at::kDouble));
  const at::Tensor a = at::stack(mats);
  Refined refined;
  try {
    refined = refine_batch(a, map, method, c.output);
  } catch (const c10::Error& e) {
    std::string which;
    for (int64_t i : c.indices) which += " weights[" + std::to_string(named(i)) + "]";
    TORCH_CHECK(false, "svs.refine: decomposition failed for", which, " (", c.rows, "x", c.cols,
                "): ", e.what_without_backtrace());
  }
  for (size_t j = 0; corruption && j < c.indices.size(); ++j)
    if (c.indices[j] == corruption->index) corrupt(*corruption, a, refined.out, refined.spectra, j, map);
  std::vector<at::Tensor> outputs;
  for (int64_t i : c.indices) {
    const at::Tensor& w = weights[i];
    outputs.push_back(refined.out[outputs.size()].to(w.scalar_type()).reshape(w.sizes()));
  }
  if (certify) {
    std::vector<int64_t> names;
    for (int64_t i : c.indices) names.push_back(named(i));
    certify_chunk(a, outputs, refined, map, names);
  }
  const int8_t* routes = refined.routes.data_ptr<int8_t>();  // on the CPU, contiguous
  for (size_t j = 0; j < c.indices.size(); ++j) {
    out_weights[c.indices[j]] = outputs[j];
    if (spectra == nullptr) continue;
    spectra->values[c.indices[j]] = refined.spectra[j];
    spectra->routes[c.indices[j]] = routes[j];
  }
}

// The CPU kernels: "aten" names this same route on every device, so it is accepted as "auto".
RefineResult refine_cpu(at::TensorList weights, const OptionalTensorList& biases,
                        c10::string_view map_name, double eps, c10::string_view method_view,
                        bool certify, Spectra* spectra) {
  const std::string method(method_view);
  check_method(c10::DeviceType::CPU, method);
  const SigmaMap map = parse_map(std::string(map_name));
  check_inputs(weights, biases, eps);
  const std::optional<Corruption> corruption = take_corruption(weights.size());
  RefineResult result = refine_aten(weights, biases, map, eps, method == "aten" ? "auto" : method, spectra,
                                    certify, corruption);
  check_outputs(std::get<0>(result), std::string(map_name));
  return result;
}

}  // namespace

RefineResult refine_aten(at::TensorList weights, const OptionalTensorList& biases,
                         const SigmaMap& map, double eps, const std::string& method,
                         Spectra* spectra, bool certify, const std::optional<Corruption>& corruption,
                         const std::vector<int64_t>& caller_index) {
  std::vector<at::Tensor> out_weights(weights.size());
  const Chunks chunks = plan_chunks(weights);
  auto run = [&](const Chunk& c) {
    refine_chunk(c, weights, map, method, spectra, certify, corruption, caller_index, out_weights);
  };
  // On the CPU, the chunks whose short side is at most the spread limit run one per thread, each
  // with single-threaded LAPACK and BLAS (at::parallel_for's nested calls run serially), largest
  // first from a shared queue; the larger ones before them, one at a time, LAPACK's threading
  // being worth more there. CUDA tensors (method="aten") run one chunk at a time.
  const int64_t side = weights[0].is_cpu() && at::get_num_threads() > 1 ? spread_max_side() : 0;
  std::vector<const Chunk*> spread;
  for (const Chunk& c : chunks) {
    if (std::min(c.rows, c.cols) > side) run(c);
    else spread.push_back(&c);
  }
  std::atomic<size_t> next{0};
  at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), spread.size()), 1, [&](int64_t, int64_t) {
    for (size_t j = next++; j < spread.size(); j = next++) run(*spread[j]);
  });
  OptionalTensorList out_biases;
  for (size_t i = 0; i < biases.size(); ++i) {
    const std::optional<at::Tensor> b = biases[i];
    out_biases.push_back(b.has_value() ? std::optional<at::Tensor>(scale_bias(*b, eps))
                                       : std::nullopt);
  }
  return {out_weights, out_biases};
}

namespace {

// Test hook of the precision plan: the float32 Gram route's results (float32) and error bounds
// (float64) of the matrices a (B, m, n) (any float dtype, entries in range, any device), and
// kFloat32Budget.
std::tuple<at::Tensor, at::Tensor, double> gram32_op(const at::Tensor& a, c10::string_view map_name) {
  TORCH_CHECK_VALUE(a.dim() == 3 && a.numel() > 0 && at::isFloatingType(a.scalar_type()),
                    "svs._gram32: expected a non-empty (B, m, n) float tensor, got shape ", a.sizes());
  auto [refined, bound] = refine_gram32(a.to(at::kDouble), parse_map(std::string(map_name)));
  return {refined.out.to(at::kFloat), bound, kFloat32Budget};
}

// Sets the CPU spread limit (kCpuSpreadMaxSide) when side >= 0; returns the one in force before.
int64_t cpu_spread_max_side_op(int64_t side) { return side >= 0 ? spread_side.exchange(side) : spread_side.load(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(svs, m) {
  m.def("_gram32(Tensor a, str map=\"sqrt\") -> (Tensor out, Tensor bound, float budget)", &gram32_op);
  m.def("_cpu_spread_max_side(int side=-1) -> int", &cpu_spread_max_side_op);
}

TORCH_LIBRARY_IMPL(svs, CPU, m) {
  register_methods(c10::DeviceType::CPU, {"auto", "aten", "svd", "gram"});
  m.impl("refine", &refine_kernel<refine_cpu>);
  m.impl("refine_with_spectra", &refine_with_spectra_kernel<refine_cpu>);
}

}  // namespace svs
