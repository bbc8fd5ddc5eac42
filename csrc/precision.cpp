// The precision plan of svs::refine: see precision.h.
#include "precision.h"

#include <cmath>

namespace svs {

double unit_roundoff(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return std::ldexp(1.0, -53);
    case at::kFloat: return std::ldexp(1.0, -24);
    case at::kHalf: return std::ldexp(1.0, -11);
    case at::kBFloat16: return std::ldexp(1.0, -8);
    default: return std::ldexp(1.0, -3);  // float8: the coarsest
  }
}

bool float32_eligible(at::ScalarType output) { return output == at::kBFloat16 || output == at::kHalf; }

namespace {

// h(s) = f'(s) s - f(s) of the map: g(l) = f(sqrt l) / sqrt l has g'(l) = h(s) / (2 s^3).
at::Tensor map_h(const at::Tensor& s, const SigmaMap& map) {
  using K = SigmaMap::Kind;
  switch (map.kind) {
    case K::Sqrt: return -0.5 * s.sqrt();
    case K::Log1p: return s / (1 + s) - s.log1p();
    case K::AbsLog: return s.log().sign() - s.log().abs();
    case K::Power: return (map.power - 1) * s.pow(map.power);
    case K::Ones: return -at::ones_like(s);
    case K::Square: return s * s;
    case K::Spectral:  // linear in W: g is constant
    case K::Identity: return at::zeros_like(s);
  }
  return at::full_like(s, INFINITY);
}

}  // namespace

at::Tensor gram32_error_bound(const at::Tensor& l32, const SigmaMap& map) {
  const at::Tensor l = l32.to(at::kDouble);
  const int64_t k = l.size(-1);
  const double u32 = unit_roundoff(at::kFloat);
  const at::Tensor l_max = l.narrow(-1, k - 1, 1);
  const at::Tensor delta = kGram32Noise * u32 * l_max;
  const at::Tensor s = l.clamp_min(0).sqrt();
  const at::Tensor s_max = s.narrow(-1, k - 1, 1);
  const at::Tensor f = apply_map(s, s_max, s > 0, map);
  const at::Tensor e = map_h(s, map).abs() / (2 * l);
  const at::Tensor bound =
      (delta.squeeze(-1) * at::linalg_vector_norm(e, 2, {-1}) / at::linalg_vector_norm(f, 2, {-1})) +
      kGram32Product * std::sqrt(static_cast<double>(k)) * u32;
  const at::Tensor first_order = (l.narrow(-1, 0, 1) >= kGram32Floor * delta).squeeze(-1) & (l_max > 0).squeeze(-1);
  return at::where(first_order & at::isfinite(bound), bound, at::full_like(bound, INFINITY));
}

at::Tensor gram32_within_budget(const at::Tensor& l, const SigmaMap& map, at::ScalarType output) {
  return gram32_error_bound(l, map) <= kFloat32Budget * unit_roundoff(output);
}

at::Tensor gram32_in_range(const at::Tensor& a) {
  const at::Tensor top = a.abs().amax({-2, -1}).to(at::kDouble);
  return (top >= std::ldexp(1.0, -kGram32Range)) & (top <= std::ldexp(1.0, kGram32Range));
}

}  // namespace svs
