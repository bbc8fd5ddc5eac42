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
//   order           s >= 0 and descending;            tolerance max(m, n) eps64 (relative to s_max)
//   energy          |sum s^2 - ||W||^2| / max(..)     2 T k max(m, n) eps64
//   norm            |sum f^2 - ||W'||^2| / max(..)    2 e + e^2
//   inner           |<W', W> - sum f s| / (||W'|| ||W||)   e
//   left-symmetry   x^T W' W^T y - y^T W' W^T x      t * 2 e  (relative to ||W'||_F s_max)
//   right-symmetry  u^T W^T W' v - v^T W^T W' u      t * 2 e
// where e = u_out + tiny_out sqrt(mn) / ||W'|| + e_rec + T rho bounds the relative Frobenius error
// of the returned W' against U f(S) V^T: u_out the output dtype's unit roundoff (the final cast),
// tiny_out its subnormal spacing (tiny values lose relative precision), e_rec the reconstruction's
// (Precision::reconstruct), and rho the decomposition's backward error, max(m, n) eps64
// (gamma + sqrt(k gamma)) with gamma = 1 for SVD routes and, for the Gram routes, whose error
// grows with the conditioning, gamma = s_max^2 sum (f_i / s_i)^2 / sum f_i^2 (the bound of
// || Q g(L) Q^T E ||, E the eigen-residual of the Gram matrix ~ max(m, n) eps64 s_max^2).
// T = kModelMargin covers the constants of those first-order models.
//
// The symmetry checks are random probes: q = kProbes pairs of Gaussian vectors, their residual the
// root mean square of the q bilinear forms. For an antisymmetric error A (rank >= 2) each form
// is ||A||_F L / sqrt(2) with L at worst Laplace(1) (rank 2), so the statistic exceeds
// t ||A||_F with t = kProbeTail = 11 with probability <= e^-r (1 + r + r^2/2 + r^3/6) at
// r = sqrt(2q) t = 31: < 3e-10 per check. That is the false-alarm bound of a correct result (the
// other checks are deterministic bounds), for every dtype, for well-conditioned and
// rank-deficient inputs alike; the probes are fixed per shape (a private generator: the caller's
// random state is untouched, and a call is reproducible).
//
// What it cannot see: an error below its tolerance (in bfloat16 ~2e-2 relative for the norm
// checks, ~1e-1 for the probes; float32 ~1e-6; float64 ~1e-12 on the SVD routes, looser on a Gram
// route used past its accuracy range, method="gram" on ill-conditioned matrices), a permutation
// or a sign change among equal singular values (the result is then the same or as valid),
// and an error that keeps every invariant above (e.g. W' = U f(S) V^T with f replaced by another
// map that agrees with it on this spectrum).
#include "refine.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/library.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <mutex>

namespace svs {
namespace {

constexpr int64_t kProbes = 4;         // q probe pairs per symmetry check
constexpr double kProbeTail = 11.0;    // t
constexpr double kModelMargin = 16.0;  // T

// x / y, with 0 / 0 = 0 and x / 0 = inf for x > 0 (NaN stays NaN: it fails).
at::Tensor ratio(const at::Tensor& x, const at::Tensor& y) {
  return at::where(y > 0, x / y, at::where(x > 0, at::full_like(x, INFINITY), x * 0));
}

// |x - y| / max(x, y) for nonnegative x, y.
at::Tensor relative(const at::Tensor& x, const at::Tensor& y) { return ratio((x - y).abs(), at::maximum(x, y)); }

// Fixed Gaussian probes of a shape: (m, 2q) for the left check and (n, 2q) for the right one.
std::pair<at::Tensor, at::Tensor> probes(int64_t m, int64_t n, const at::TensorOptions& options) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(m) * 1000003u + static_cast<uint64_t>(n));
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  at::Tensor x = at::randn({m, 2 * kProbes}, gen, f64), v = at::randn({n, 2 * kProbes}, gen, f64);
  return {x.to(options), v.to(options)};
}

// Root mean square over the q pairs of p_j . r_{q+j} - p_{q+j} . r_j (p, r: (B, 2q, len)).
at::Tensor asymmetry(const at::Tensor& p, const at::Tensor& r) {
  const at::Tensor d = (p.narrow(1, 0, kProbes) * r.narrow(1, kProbes, kProbes)).sum(-1) -
                       (p.narrow(1, kProbes, kProbes) * r.narrow(1, 0, kProbes)).sum(-1);
  return d.square().mean(-1).sqrt();
}

// Matrices with an entry beyond 2^+-100 are scaled to a largest entry of 1 before squares and
// products (the checks form fourth powers: 2^+-400 stays a normal float64); the scaling pass is
// skipped when no matrix needs it (one host read).
constexpr double kScaleAbove = 0x1p100, kScaleBelow = 0x1p-100;

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
// shape like the kernels: (N, 2 * kChecks) float64, residuals then tolerances.
at::Tensor certify_op(at::TensorList weights, at::TensorList outputs, at::TensorList spectra,
                      at::IntArrayRef routes, c10::string_view map_name, double reconstruct) {
  TORCH_CHECK(!weights.empty() && outputs.size() == weights.size() && spectra.size() == weights.size() &&
                  routes.size() == weights.size(),
              "svs._certify: weights, outputs, spectra and routes must have one entry per weight");
  const SigmaMap map = parse_map(std::string(map_name));
  at::Tensor result = at::empty({static_cast<int64_t>(weights.size()), 2 * kChecks},
                                weights[0].options().dtype(at::kDouble));
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
    const at::Tensor rows = at::tensor(indices, at::kLong).to(result.device());
    result.index_copy_(0, rows, certify(at::stack(a), at::stack(out), at::stack(s), codes, map, precision));
  }
  return result;
}

std::vector<std::string> check_names() { return {std::begin(kCheckNames), std::end(kCheckNames)}; }

}  // namespace

Precision precision_of(at::ScalarType output, double reconstruct) {
  switch (output) {
    case at::kDouble: return {std::ldexp(1.0, -53), std::ldexp(1.0, -1074), reconstruct};
    case at::kFloat: return {std::ldexp(1.0, -24), std::ldexp(1.0, -149), reconstruct};
    case at::kHalf: return {std::ldexp(1.0, -11), std::ldexp(1.0, -24), reconstruct};
    case at::kBFloat16: return {std::ldexp(1.0, -8), std::ldexp(1.0, -133), reconstruct};
    default: return {std::ldexp(1.0, -3), std::ldexp(1.0, -9), reconstruct};  // float8: the coarsest
  }
}

at::Tensor certify(const at::Tensor& a, const at::Tensor& out, const at::Tensor& s,
                   const std::vector<int8_t>& routes, const SigmaMap& map,
                   const std::vector<Precision>& precision) {
  const int64_t B = a.size(0), m = a.size(1), n = a.size(2), k = std::min(m, n), N = std::max(m, n);
  const auto options = a.options();
  std::vector<double> unit, tiny, reconstruct, gram;
  for (int64_t b = 0; b < B; ++b) {
    unit.push_back(precision[b].unit);
    tiny.push_back(precision[b].tiny);
    reconstruct.push_back(precision[b].reconstruct);
    gram.push_back(is_gram_route(routes[b]) ? 1.0 : 0.0);
  }
  auto per_matrix = [&](const std::vector<double>& v) { return at::tensor(v, at::kDouble).to(options.device()); };

  // Where needed, everything is scaled by the largest entry of W (and s) or of W' (and f(s)): no
  // square overflows or underflows, whatever the magnitude of the weights.
  const at::Tensor a_max = at::linalg_vector_norm(a, INFINITY, {-2, -1}), o_max = at::linalg_vector_norm(out, INFINITY, {-2, -1});
  auto extreme = [](const at::Tensor& x) { return (x > kScaleAbove) | ((x < kScaleBelow) & (x > 0)); };
  const bool scaled = (extreme(a_max) | extreme(o_max)).any().item<bool>();
  auto inverse = [&](const at::Tensor& x) {
    return scaled ? at::where(x > 0, x.reciprocal(), at::ones_like(x)) : at::ones_like(x);
  };
  const at::Tensor ia = inverse(a_max), io = inverse(o_max);
  const at::Tensor as = scaled ? a * ia.view({B, 1, 1}) : a, os = scaled ? out * io.view({B, 1, 1}) : out;
  const at::Tensor s_max = s.narrow(-1, 0, 1);
  const at::Tensor f = apply_map(s, s_max, s > 0, map);
  const at::Tensor ss = s * ia.unsqueeze(-1), fs = f * io.unsqueeze(-1);

  const at::Tensor step = k > 1 ? (s.narrow(-1, 1, k - 1) - s.narrow(-1, 0, k - 1)).amax(-1) : at::zeros({B}, options);
  const at::Tensor order = ratio(at::maximum(step.clamp_min(0), (-s).amax(-1).clamp_min(0)), s_max.squeeze(-1));
  const at::Tensor w2 = at::linalg_vector_norm(as, 2, {-2, -1}).square(), s2 = ss.square().sum(-1);
  const at::Tensor o2 = at::linalg_vector_norm(os, 2, {-2, -1}).square(), f2 = fs.square().sum(-1);
  const at::Tensor energy = relative(w2, s2), norm = relative(o2, f2);
  const at::Tensor dot = at::matmul(os.reshape({B, 1, m * n}), as.reshape({B, m * n, 1})).view({B});
  const at::Tensor inner = ratio((dot - (fs * ss).sum(-1)).abs(), at::maximum(o2 * w2, f2 * s2).sqrt());
  // ||W'||_F s_max, with s_max >= ||W||_F / sqrt(k) (true of any valid s) so a wrong s cannot
  // inflate the tolerance.
  const at::Tensor scale = o2.sqrt() * at::maximum(ss.narrow(-1, 0, 1).squeeze(-1), (w2 / k).sqrt());
  const auto [x, v] = probes(m, n, options);
  const at::Tensor xt = x.t();  // (2q, m) @ (B, m, n): no copy of the matrices
  const at::Tensor left = ratio(asymmetry(at::matmul(xt, os), at::matmul(xt, as)), scale);
  const at::Tensor right = ratio(asymmetry(at::matmul(as, v).mT(), at::matmul(os, v).mT()), scale);

  // gamma (Gram routes): s_max^2 sum (f_i / s_i)^2 / sum f_i^2, formed from ratios <= 1 / eps.
  const at::Tensor kept = s > 0;
  const at::Tensor f_max = f.amax(-1, /*keepdim=*/true);
  const at::Tensor w = at::where(kept & (f_max > 0), f / at::where(f_max > 0, f_max, at::ones_like(f_max)), at::zeros_like(f));
  const at::Tensor r = at::where(kept, s_max / at::where(kept, s, at::ones_like(s)), at::zeros_like(s));
  const at::Tensor gamma_gram = at::where(f_max.squeeze(-1) > 0, ratio((w * r).square().sum(-1), w.square().sum(-1)),
                                          at::ones({B}, options)).clamp_min(1.0);
  const at::Tensor gamma = at::where(per_matrix(gram) > 0, gamma_gram, at::ones({B}, options));
  const at::Tensor rho = N * kEps64 * (gamma + (k * gamma).sqrt());
  const at::Tensor norm_out = at::maximum(o2, f2).sqrt() / io;  // ||W'||_F, unscaled
  const at::Tensor e = per_matrix(unit) + ratio(per_matrix(tiny) * std::sqrt(static_cast<double>(m * n)), norm_out) +
                       per_matrix(reconstruct) + kModelMargin * rho;
  const at::Tensor ones = at::ones({B}, options);
  return at::stack({order, energy, norm, inner, left, right,
                    ones * (N * kEps64), ones * (2 * kModelMargin * k * N * kEps64), 2 * e + e * e, e,
                    kProbeTail * 2 * e, kProbeTail * 2 * e},
                   -1);
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
