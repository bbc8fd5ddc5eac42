// The certificate of svs::refine: every result W' is tested against its weight W and the
// singular values s its route reports, before it is returned or written.
//
// What it proves. With W = U S V^T, the result must be W' = U f(S) V^T. If W' W^T and W^T W' are
// both symmetric, then W' = U A V^T with A S and S A symmetric, which forces A diagonal wherever
// the singular values are distinct: W' has W's singular vectors. The scalar identities then pin
// down the diagonal: sum s^2 = ||W||_F^2 (the spectrum is W's), sum f(s)^2 = ||W'||_F^2 and
// <W', W> = sum f(s_i) s_i (by the rearrangement inequality, f applied in the wrong order changes
// this sum unless the values it swaps are equal). Singular values under the rank tolerance are
// reported as zeros and contribute nothing to either side, so the rank rule is respected.
// Checks (the columns of certify(), kCheckNames):
//   order           s >= 0 and descending;            tolerance max(m, n) u_d (relative to s_max)
//   energy          |sum s^2 - ||W||^2| / max(..)     2 T k max(m, n) u_d
//   norm            |sum f^2 - ||W'||^2| / max(..)    2 e + e^2
//   inner           |<W', W> - sum f s| / (||W'|| ||W||)   e
//   left-symmetry   x^T W' W^T y - y^T W' W^T x      t * 2 e  (relative to ||W'||_F s_max)
//   right-symmetry  u^T W^T W' v - v^T W^T W' u      t * 2 e
// where e = u_out + tiny_out sqrt(mn) / ||W'|| + e_rec + T rho bounds the relative Frobenius error
// of the returned W' against U f(S) V^T: u_out the output dtype's unit roundoff (the final cast),
// tiny_out its subnormal spacing (tiny values lose relative precision), e_rec the reconstruction's
// (Precision::reconstruct), and rho the decomposition's backward error, max(m, n) u_d
// (gamma + sqrt(k gamma)) with gamma = 1 for SVD routes and, for the Gram routes, whose error
// grows with the conditioning, gamma = s_max^2 sum (f_i / s_i)^2 / sum f_i^2 (the bound of
// || Q g(L) Q^T E ||, E the eigen-residual of the Gram matrix ~ max(m, n) u_d s_max^2).
// u_d = Precision::decompose is the unit roundoff the decomposition worked in: eps64, or eps32 on
// the float32 routes (precision.h).
// T = kModelMargin covers the constants of those first-order models.
//
// The symmetry checks are random probes: q = kProbes = 2 pairs of Gaussian vectors, their
// residual the root mean square of the q bilinear forms. For an antisymmetric error A (rank >= 2) each form
// is ||A||_F L / sqrt(2) with L at worst Laplace(1) (rank 2), so the statistic exceeds
// t ||A||_F with t = kProbeTail = 13 with probability <= P(|L_1| + |L_2| > r) = e^-r (1 + r) at
// r = sqrt(2q) t = 26: < 2e-10 per check. That is the false-alarm bound of a correct result (the
// other checks are deterministic bounds), for every dtype, for well-conditioned and
// rank-deficient inputs alike; the probes are fixed per shape (a private generator: the caller's
// random state is untouched, and a call is reproducible).
//
// What it cannot see: an error below its tolerance (the ATen route tests its float64 result
// before the cast, u_out = 0: ~1e-12 relative on the SVD routes in every dtype; CUDA tests the
// returned tensor with its float32/TF32 reconstruction: ~1e-2 (norms) to 1e-1 (probes) in half
// types, 1e-5 to 1e-3 in float32; looser on a Gram route used past its accuracy range,
// method="gram" on ill-conditioned matrices), a permutation or a sign change among equal
// singular values (the result is then the same or as valid), and an error that keeps every
// invariant above (e.g. f replaced by another map that agrees with it on this spectrum).
//
// Cost: the spectra in host loops; each matrix and its result read by two norms, one dot product
// and four products with a (2q)-column probe block, O(mn) per matrix, memory-bound
// (benchmarks/results/certificate-cpu-*.md).
#include "precision.h"
#include "refine.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>

namespace svs {
namespace {

constexpr int64_t kProbes = 2;         // q probe pairs per symmetry check
constexpr double kProbeTail = 13.0;    // t
constexpr double kModelMargin = 16.0;  // T

// max that propagates NaN (a NaN residual must fail).
double max_nan(double x, double y) { return (std::isnan(x) || std::isnan(y)) ? NAN : std::max(x, y); }

// x / y, with 0 / 0 = 0 and x / 0 = inf for x > 0 (NaN stays NaN: it fails).
double ratio(double x, double y) { return y > 0 ? x / y : (x > 0 ? INFINITY : x * 0); }

// |x - y| / max(x, y) for nonnegative x, y.
double relative(double x, double y) { return ratio(std::abs(x - y), max_nan(x, y)); }

// Fixed Gaussian probes of a shape: (m, 2q) for the left check and (n, 2q) for the right one,
// drawn once per shape and device (a private generator: the caller's random state is untouched).
std::pair<at::Tensor, at::Tensor> probes(int64_t m, int64_t n, const at::TensorOptions& options) {
  static std::mutex mutex;
  static auto* cache = new std::map<std::tuple<int64_t, int64_t, std::string>, std::pair<at::Tensor, at::Tensor>>();
  const auto key = std::make_tuple(m, n, options.device().str());
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache->find(key);
  if (it == cache->end()) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(m) * 1000003u + static_cast<uint64_t>(n));
    const auto f64 = at::TensorOptions().dtype(at::kDouble);
    at::Tensor x = at::randn({m, 2 * kProbes}, gen, f64), v = at::randn({n, 2 * kProbes}, gen, f64);
    it = cache->emplace(key, std::make_pair(x.to(options.device()), v.to(options.device()))).first;
  }
  return it->second;
}

// Root mean square over the q pairs of p_j . r_{q+j} - p_{q+j} . r_j (p, r: (B, 2q, len)).
at::Tensor asymmetry(const at::Tensor& p, const at::Tensor& r) {
  const at::Tensor d = (p.narrow(1, 0, kProbes) * r.narrow(1, kProbes, kProbes)).sum(-1) -
                       (p.narrow(1, kProbes, kProbes) * r.narrow(1, 0, kProbes)).sum(-1);
  return d.square().mean(-1).sqrt();
}

// <W'_b, W_b> for every b: one BLAS dot per matrix (a batched (1 x mn)(mn x 1) product or a
// product-and-sum costs 3-6x more on the CPU), or one product-and-sum for small matrices, where
// the per-call cost would dominate.
at::Tensor inner_products(const at::Tensor& x, const at::Tensor& y) {
  const int64_t B = x.size(0);
  if (x.size(1) * x.size(2) < 4096) return (x * y).sum({-2, -1});
  std::vector<at::Tensor> dots;
  for (int64_t b = 0; b < B; ++b) dots.push_back(at::dot(x[b].reshape({-1}), y[b].reshape({-1})));
  return at::stack(dots);
}

// Matrices whose s_max or max f(s) lies beyond 2^+-100 are scaled before squares and products
// (the checks form fourth powers: 2^+-400 stays a normal float64, and the largest entry is
// within sqrt(mn) of the spectral norm); the scaling pass is skipped when no matrix needs it
// (one host read).
constexpr double kScaleAbove = 0x1p100, kScaleBelow = 0x1p-100;
constexpr double kSpacing64 = 0x1p-1074;  // float64's smallest subnormal: its grid's spacing near 0

// A bound on |s f'(s) / f(s)|, how much a relative change of s moves f(s) (relative): the degree
// of the homogeneous maps; 1 for log1p (s / ((1 + s) log1p(s)) <= 1) and, where s is subnormal,
// abslog (1 / |log s| < 1).
double map_condition(const SigmaMap& map) {
  switch (map.kind) {
    case SigmaMap::Kind::Power: return std::max(1.0, std::abs(map.power));
    case SigmaMap::Kind::Square: return 2.0;
    case SigmaMap::Kind::Ones: return 0.0;
    default: return 1.0;
  }
}

std::mutex corruption_mutex;
std::optional<Corruption> armed;
constexpr const char* kCorruptions[] = {"transpose", "reverse", "permute", "map", "unconverged", "swap"};

void corrupt_next(c10::string_view kind, int64_t index) {
  bool known = false;
  for (const char* name : kCorruptions) known = known || kind == name;
  TORCH_CHECK(known && index >= 0, "svs._corrupt_next (test hook): unknown kind '", kind,
              "' or negative index ", index);
  std::lock_guard<std::mutex> lock(corruption_mutex);
  armed = Corruption{std::string(kind), index};
}

// The certificate of results computed elsewhere (tests: the Triton reconstruction), grouped by
// shape like the kernels: (N, 2 * kChecks) float64 on the CPU, residuals then tolerances.
at::Tensor certify_op(at::TensorList weights, at::TensorList outputs, at::TensorList spectra,
                      at::IntArrayRef routes, c10::string_view map_name, double reconstruct) {
  TORCH_CHECK(!weights.empty() && outputs.size() == weights.size() && spectra.size() == weights.size() &&
                  routes.size() == weights.size(),
              "svs._certify: weights, outputs, spectra and routes must have one entry per weight");
  const SigmaMap map = parse_map(std::string(map_name));
  at::Tensor result = at::empty({static_cast<int64_t>(weights.size()), 2 * kChecks},
                                at::TensorOptions().dtype(at::kDouble));
  for (const auto& [shape, indices] : group_by_shape(weights)) {
    std::vector<at::Tensor> a, out, s;
    std::vector<int8_t> codes;
    std::vector<Precision> precision;
    for (int64_t i : indices) {
      a.push_back(weights[i].reshape({shape.first, shape.second}).to(at::kDouble));
      out.push_back(outputs[i].reshape({shape.first, shape.second}).to(at::kDouble));
      s.push_back(spectra[i].to(at::kDouble));
      codes.push_back(static_cast<int8_t>(routes[i]));
      const double k = static_cast<double>(std::min(shape.first, shape.second));
      precision.push_back(precision_of(outputs[i].scalar_type(), reconstruct > 0 ? reconstruct : (k + 2) * kEps64));
    }
    const at::Tensor rows = at::tensor(indices, at::kLong);
    result.index_copy_(0, rows, certify(at::stack(a), at::stack(out), at::stack(s), codes, map, precision));
  }
  return result;
}

std::vector<std::string> check_names() { return {std::begin(kCheckNames), std::end(kCheckNames)}; }

// The spacing of a dtype's subnormal numbers.
double subnormal_spacing(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return std::ldexp(1.0, -1074);
    case at::kFloat: return std::ldexp(1.0, -149);
    case at::kHalf: return std::ldexp(1.0, -24);
    case at::kBFloat16: return std::ldexp(1.0, -133);
    default: return std::ldexp(1.0, -9);  // float8: the coarsest
  }
}

}  // namespace

Precision precision_of(at::ScalarType output, double reconstruct) {
  return {unit_roundoff(output), subnormal_spacing(output), reconstruct};
}

at::Tensor certify(const at::Tensor& a, const at::Tensor& out, const at::Tensor& s,
                   const std::vector<int8_t>& routes, const SigmaMap& map,
                   const std::vector<Precision>& precision) {
  RECORD_FUNCTION("svs::certify", std::vector<c10::IValue>());  // its share in torch.profiler
  const int64_t B = a.size(0), m = a.size(1), n = a.size(2), k = std::min(m, n), N = std::max(m, n);
  // The spectra on the host: O(k) per matrix in plain loops, no per-op dispatch cost.
  const at::Tensor sh = s.to(at::kCPU, at::kDouble).contiguous();
  const at::Tensor fh = apply_map(sh, sh.narrow(-1, 0, 1), sh > 0, map).contiguous();
  const double* sp = sh.data_ptr<double>();
  const double* fp = fh.data_ptr<double>();
  // Where needed, W and s are scaled by s_max, W' and f(s) by max f(s) (the spectral norms they
  // must have), so that no square or product overflows or underflows whatever the magnitude of
  // the weights. Scales taken from s cost no pass over the matrices; a wrong s can make a
  // product overflow, and the resulting inf or NaN fails the certificate, as a wrong s should.
  // Each scale 2^-e is kept as two factors 2^-e1 2^-(e-e1), both representable for every e a
  // float64 can have (a subnormal s_max needs 2^1074, past float64's range as one number).
  std::vector<double> s_max(B), f_max(B), ia(B, 1.0), ia2(B, 1.0), io(B, 1.0), io2(B, 1.0);
  auto halves = [](double x, double& h1, double& h2) {  // h1 h2 = 2^-e, x = m 2^e, m in [0.5, 1)
    if (!(x > 0) || !std::isfinite(x)) return;
    int e = 0;
    std::frexp(x, &e);
    h1 = std::ldexp(1.0, -e / 2);
    h2 = std::ldexp(1.0, -e + e / 2);
  };
  bool scaled = false;
  auto extreme = [](double x) { return !std::isfinite(x) || x > kScaleAbove || (x > 0 && x < kScaleBelow); };
  for (int64_t b = 0; b < B; ++b) {
    s_max[b] = sp[b * k];
    f_max[b] = *std::max_element(fp + b * k, fp + (b + 1) * k);
    scaled = scaled || extreme(s_max[b]) || extreme(f_max[b]);
  }
  for (int64_t b = 0; scaled && b < B; ++b) {
    halves(s_max[b], ia[b], ia2[b]);
    halves(f_max[b], io[b], io2[b]);
  }
  // The matrices, read by two norms, one dot product and four products with a thin probe block.
  at::Tensor as = a, os = out;
  if (scaled) {
    auto factor = [&](const std::vector<double>& h) { return at::tensor(h, at::kDouble).to(a.device()).view({B, 1, 1}); };
    as = a * factor(ia) * factor(ia2);
    os = out * factor(io) * factor(io2);
  }
  const auto [x, v] = probes(m, n, a.options());
  const at::Tensor xt = x.t();  // (2q, m) @ (B, m, n): no copy of the matrices
  const at::Tensor measured =
      at::stack({at::linalg_vector_norm(as, 2, {-2, -1}), at::linalg_vector_norm(os, 2, {-2, -1}),
                 inner_products(os, as),
                 asymmetry(at::matmul(xt, os), at::matmul(xt, as)),
                 asymmetry(at::matmul(as, v).mT(), at::matmul(os, v).mT())},
                1)
          .cpu()
          .contiguous();
  const double* d = measured.data_ptr<double>();

  at::Tensor result = at::empty({B, 2 * kChecks}, at::TensorOptions().dtype(at::kDouble));
  double* row = result.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b, row += 2 * kChecks) {
    const double *sb = sp + b * k, *fb = fp + b * k;
    double disorder = 0, s2 = 0, f2 = 0, fs_dot = 0, wr2 = 0, w2 = 0, spaced = 0;
    for (int64_t i = 0; i < k; ++i) {
      disorder = max_nan(disorder, max_nan(-sb[i], i > 0 ? sb[i] - sb[i - 1] : 0.0));
      if (sb[i] > 0) spaced = std::max(spaced, kSpacing64 / (2 * sb[i]));
      const double ss = sb[i] * ia[b] * ia2[b], fs = fb[i] * io[b] * io2[b];
      s2 += ss * ss;
      f2 += fs * fs;
      fs_dot += fs * ss;
      if (sb[i] > 0 && f_max[b] > 0) {  // gamma's sums, from ratios <= 1 / eps
        const double w = fb[i] / f_max[b], r = s_max[b] / sb[i];
        wr2 += (w * r) * (w * r);
        w2 += w * w;
      }
    }
    const double w_norm = d[5 * b], o_norm = d[5 * b + 1], dot = d[5 * b + 2];
    const double wf2 = w_norm * w_norm, o2 = o_norm * o_norm;
    const double gamma = is_gram_route(routes[b]) && w2 > 0 ? std::max(1.0, wr2 / w2) : 1.0;
    const double rho = N * precision[b].decompose * (gamma + std::sqrt(k * gamma));
    const double e = precision[b].unit + precision[b].reconstruct + kModelMargin * rho +
                     ratio(precision[b].tiny * std::sqrt(static_cast<double>(m * n)),
                           max_nan(o_norm, std::sqrt(f2)) / io[b] / io2[b]);
    // ||W'||_F s_max, with s_max >= ||W||_F / sqrt(k) (true of any valid s) so a wrong s cannot
    // inflate the tolerance.
    const double sym_scale = o_norm * max_nan(s_max[b] * ia[b] * ia2[b], w_norm / std::sqrt(static_cast<double>(k)));
    const double residuals[kChecks] = {ratio(disorder, s_max[b]), relative(wf2, s2), relative(o2, f2),
                                       ratio(std::abs(dot - fs_dot), std::sqrt(max_nan(o2 * wf2, f2 * s2))),
                                       ratio(d[5 * b + 3], sym_scale), ratio(d[5 * b + 4], sym_scale)};
    // spaced: the relative rounding of the reported s to float64's grid near zero (2^-1074 apart),
    // negligible unless s is subnormal (weights near 1e-310); it moves s^2 by 2 spaced and f(s)
    // by map_condition spaced (relative), so the energy, norm and inner checks allow for it.
    const double c_f = map_condition(map);
    const double u_dec = precision[b].decompose;
    const double tolerances[kChecks] = {N * u_dec, 2 * kModelMargin * k * N * u_dec + 2 * spaced,
                                        2 * e + e * e + 2 * c_f * spaced, e + (1 + c_f) * spaced,
                                        kProbeTail * 2 * e, kProbeTail * 2 * e};
    std::copy(residuals, residuals + kChecks, row);
    std::copy(tolerances, tolerances + kChecks, row + kChecks);
  }
  return result;
}

int64_t failed_check(const double* row) {
  for (int64_t c = 0; c < kChecks; ++c)
    if (!(row[c] <= row[kChecks + c])) return c;
  return -1;
}

std::string describe_failure(const double* row, int64_t check) {
  char text[160];
  std::snprintf(text, sizeof(text), "%s residual %.3g > tolerance %.3g", kCheckNames[check], row[check],
                row[kChecks + check]);
  return text;
}

std::optional<Corruption> take_corruption(size_t weight_count) {
  std::lock_guard<std::mutex> lock(corruption_mutex);
  std::optional<Corruption> c = armed;
  armed.reset();
  TORCH_CHECK(!c || c->index < static_cast<int64_t>(weight_count), "svs._corrupt_next (test hook): weights[",
              c ? c->index : 0, "] is not in a call of ", weight_count, " weights");
  return c;
}

std::vector<int64_t> corrupt(const Corruption& c, const at::Tensor& a, at::Tensor& out, const at::Tensor& s,
                             int64_t j, const SigmaMap& map) {
  const int64_t m = a.size(1), n = a.size(2);
  if (c.kind == "swap") {
    TORCH_CHECK(a.size(0) > 1, "svs._corrupt_next: 'swap' needs a second weight of shape (", m, ", ", n, ")");
    const int64_t other = (j + 1) % a.size(0);
    const at::Tensor mine = out[j].clone();
    out[j].copy_(out[other]);
    out[other].copy_(mine);
    return {j, other};
  }
  if (c.kind == "transpose") {
    out[j].copy_(out[j].clone().reshape({n, m}).mT().reshape({m, n}));
    return {j};
  }
  // The hook's own factors of W, with f of the route's singular values (reversed, rotated or
  // under another map), or with right singular vectors off by noise.
  auto [u, unused, vh] = at::linalg_svd(a[j], /*full_matrices=*/false);
  const at::Tensor sj = s[j];
  auto f = [&](const SigmaMap& mp) { return apply_map(sj, sj.narrow(0, 0, 1), sj > 0, mp); };
  at::Tensor fs = f(map);
  if (c.kind == "reverse") fs = fs.flip(0);
  if (c.kind == "permute") fs = fs.roll(1);
  if (c.kind == "map") fs = f({map.kind == SigmaMap::Kind::Identity ? SigmaMap::Kind::Sqrt : SigmaMap::Kind::Identity});
  if (c.kind == "unconverged") {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
    vh = vh + 0.3 / std::sqrt(static_cast<double>(n)) * at::randn(vh.sizes(), gen, at::kDouble).to(vh.device());
  }
  out[j].copy_(at::matmul(u * fs.unsqueeze(0), vh));
  return {j};
}

TORCH_LIBRARY_FRAGMENT(svs, m) {
  // Test-only (a leading underscore: not part of the API). _corrupt_next arms the hook above for
  // the next svs.refine call; _certify runs the certificate on results computed elsewhere and
  // returns residuals then tolerances per check (names: _certificate_checks()). reconstruct: the
  // reconstruction's relative error bound (0: the ATen route's float64 GEMM).
  m.def("_corrupt_next(str kind, int index) -> ()", &corrupt_next);
  m.def("_certificate_checks() -> str[]", &check_names);
  m.def("_certify(Tensor[] weights, Tensor[] outputs, Tensor[] spectra, int[] routes, str map=\"sqrt\", "
        "float reconstruct=0.0) -> Tensor");
}

TORCH_LIBRARY_IMPL(svs, CompositeExplicitAutograd, m) { m.impl("_certify", &certify_op); }

}  // namespace svs
