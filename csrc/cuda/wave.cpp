// Buffers and phases of one wave (wave.h).
#include "wave.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAStream.h>

#include <tuple>
#include <utility>

namespace svs {
namespace cuda {

void check(const Status& st, const char* while_doing) {
  TORCH_CHECK(st.ok(), "svs.refine (CUDA): ", st.call, " failed with status ", st.code, " while ",
              while_doing);
}

int64_t workspace_bytes(const Mat& a, RouteCode route) {
  constexpr int64_t DD = int64_t{kSmallDim} * kSmallDim;
  if (route == kRouteCudaSmall) return 8 * (3 * DD + kSmallDim) + 4 * (2 * DD + kSmallDim);
  const int64_t mn = a.m * a.n, kk = a.k() * a.k();
  const int64_t float64 = 8 * (3 * mn + 2 * kk + 2 * a.k()) + 4 * (mn + kk + a.k());
  if (!is_float32_route(route)) return float64;
  // float32 M, G, W, P and float64 S, I; plus the float64 route, should the matrix be redone
  return 4 * (2 * mn + kk + a.k()) + 8 * 2 * a.k() + float64;
}

cudaStream_t Wave::stream() const { return c10::cuda::getCurrentCUDAStream(device_.index()).stream(); }

int Wave::add_buffer(int64_t numel, bool zero, at::ScalarType dtype) {
  const auto opts = at::TensorOptions().dtype(dtype).device(device_);
  const int64_t size = std::max<int64_t>(numel, 1);
  buffers_.push_back(zero ? at::zeros({size}, opts) : at::empty({size}, opts));
  return static_cast<int>(buffers_.size()) - 1;
}

at::Tensor Wave::device_bytes(size_t bytes) const {
  return at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))},
                   at::TensorOptions().dtype(at::kByte).device(device_));
}

void Wave::pack(const std::vector<int>& ids, const std::vector<PackTarget>& targets) {
  std::vector<PackDesc> desc;
  int64_t total = 0;
  for (size_t b = 0; b < ids.size(); ++b) {
    const Mat& a = mat(ids[b]);
    const PackTarget& t = targets[b];
    PackDesc d{};
    d.src = a.src.data_ptr();
    d.dst = t.dst;
    d.src_stride_r = a.src.stride(0);
    d.src_stride_c = a.src.stride(1);
    d.dst_stride_r = t.stride_r;
    d.dst_stride_c = t.stride_c;
    d.rows = a.m;
    d.cols = a.n;
    d.dst_rows = t.dst_rows;
    d.dst_cols = t.dst_cols;
    d.src_type = a.src_type;
    d.dst_f32 = t.f32 ? 1 : 0;
    d.begin = total;
    total += t.dst_rows * t.dst_cols;
    desc.push_back(d);
  }
  at::Tensor dev = upload(desc, device_);
  keep_alive_.push_back(dev);
  check(cuda::pack(device_ptr<PackDesc>(dev), static_cast<int64_t>(desc.size()), total, stream()),
        "packing the weights into scratch");
}

void Wave::threshold(std::vector<SegmentDesc>& segments) {
  if (segments.empty()) return;
  at::Tensor dev = upload(segments, device_);
  keep_alive_.push_back(dev);
  check(threshold_segments(device_ptr<SegmentDesc>(dev), static_cast<int64_t>(segments.size()),
                           kGramMaxEigenRatio, stream()),
        "thresholding the spectra");
}

void Wave::set_svd_factors(int id, RouteCode route, View u, View s, View vh) {
  Factors& f = factors_[id];
  f.route = route;
  f.ascending = false;
  f.u = std::move(u);
  f.s = std::move(s);
  f.vh = std::move(vh);
  f.rel_tol = rank_tolerance(mat(id).m, mat(id).n, std::numeric_limits<double>::epsilon());
  f.needs_threshold = true;
}

// One launch: every raw singular value <= rel_tol * s_max becomes 0 (the rank rule).
void Wave::threshold_svd_factors() {
  std::vector<SegmentDesc> seg;
  for (auto& f : factors_) {
    if (!f.needs_threshold) continue;
    SegmentDesc d{};
    d.values = ptr(f.s.buffer) + f.s.offset;
    d.k = f.s.sizes[0];
    d.rel_tol = f.rel_tol;
    d.eigen = 0;
    seg.push_back(d);
    f.needs_threshold = false;
  }
  threshold(seg);
}

void Wave::scale_by_inverse_sigma(const std::vector<int>& ids, int products,
                                  const std::vector<int64_t>& moff, int inv,
                                  const std::vector<int64_t>& inv_off) {
  std::vector<ScaleDesc> desc;
  int64_t total = 0;
  for (size_t b = 0; b < ids.size(); ++b) {
    const Mat& a = mat(ids[b]);
    ScaleDesc d{};
    const bool f32 = buffers_[products].scalar_type() == at::kFloat;
    d.p = f32 ? static_cast<void*>(data<float>(products) + moff[b]) : static_cast<void*>(ptr(products) + moff[b]);
    d.p_f32 = f32 ? 1 : 0;
    d.scale = ptr(inv) + inv_off[b];
    d.rows = a.m;
    d.cols = a.n;
    d.begin = total;
    d.by_row = a.m <= a.n ? 1 : 0;
    total += a.m * a.n;
    desc.push_back(d);
  }
  at::Tensor dev = upload(desc, device_);
  keep_alive_.push_back(dev);
  check(scale(device_ptr<ScaleDesc>(dev), static_cast<int64_t>(desc.size()), total, stream()),
        "scaling by the inverse singular values");
}

void Wave::run_route(RouteCode route, const std::vector<int>& ids, int* info, int* ill) {
  switch (route) {
    case kRouteCudaSmall: return run_small(ids, info);
    case kRouteCudaGramPadded: return run_gram<double>(ids, info, ill, /*padded=*/true);
    case kRouteCudaGram: return run_gram<double>(ids, info, ill, /*padded=*/false);
    case kRouteCudaGramPadded32: return run_gram<float>(ids, info, ill, /*padded=*/true);
    case kRouteCudaGram32: return run_gram<float>(ids, info, ill, /*padded=*/false);
    case kRouteCudaJacobi: return run_per_matrix_svd(ids, info, /*exact=*/false);
    case kRouteCudaExact: return run_per_matrix_svd(ids, info, /*exact=*/true);
    default: TORCH_CHECK(false, "svs.refine (CUDA): internal error: ", kRouteNames[route], " is not a planned route");
  }
}

void Wave::materialise(std::vector<at::Tensor>& u, std::vector<at::Tensor>& s,
                       std::vector<at::Tensor>& vh) {
  const size_t count = buffers_.size();
  std::vector<char> need64(count, 0), need32(count, 0);
  for (size_t i = 0; i < mats_.size(); ++i) {
    std::vector<char>& need = mats_[i]->f64 ? need64 : need32;
    for (const View* v : {&factors_[i].u, &factors_[i].s, &factors_[i].vh}) need[v->buffer] = 1;
  }
  // The allocator orders these frees on the current stream, after everything enqueued so far
  // (side streams were joined back into it).
  keep_alive_.clear();
  std::vector<at::Tensor> as32(count);
  for (size_t b = 0; b < count; ++b) {
    if (need32[b]) as32[b] = buffers_[b].to(at::kFloat);
    if (!need64[b]) buffers_[b].reset();
  }
  for (size_t i = 0; i < mats_.size(); ++i) {
    const bool f64 = mats_[i]->f64;
    auto take = [&](const View& v) {
      const at::Tensor& base = f64 ? buffers_[v.buffer] : as32[v.buffer];
      return base.as_strided(v.sizes, v.strides, v.offset);
    };
    u.push_back(take(factors_[i].u));
    s.push_back(take(factors_[i].s));
    vh.push_back(take(factors_[i].vh));
  }
}

using ReconstructFn = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList, int64_t,
                           double);

void Wave::export_spectra(Spectra& spectra) {
  for (size_t i = 0; i < mats_.size(); ++i) {
    const Factors& f = factors_[i];
    const at::Tensor s = buffers_[f.s.buffer].as_strided(f.s.sizes, f.s.strides, f.s.offset);
    spectra.values[mats_[i]->index] = f.ascending ? s.flip(0) : s.clone();
    spectra.routes[mats_[i]->index] = f.route;
  }
}

void Wave::run(std::vector<at::Tensor>& outputs, Spectra* spectra) {
  const int count = static_cast<int>(mats_.size());
  std::map<RouteCode, std::vector<int>> pending;
  for (int i = 0; i < count; ++i) pending[plan_route(mat(i).m, mat(i).n, method_, mat(i).float32)].push_back(i);

  while (!pending.empty()) {
    std::vector<std::pair<RouteCode, std::vector<int>>> batches;
    int64_t total = 0;
    for (auto& [route, ids] : pending) {
      std::stable_sort(ids.begin(), ids.end(), [&](int x, int y) {
        return std::make_tuple(mat(x).m, mat(x).n, mat(x).dtype) < std::make_tuple(mat(y).m, mat(y).n, mat(y).dtype);
      });
      total += static_cast<int64_t>(ids.size());
      batches.emplace_back(route, ids);
    }
    // status[p] = info of the p-th matrix of the phase, status[total + p] = its ill flag.
    at::Tensor status = at::zeros({2 * total}, at::TensorOptions().dtype(at::kInt).device(device_));
    int64_t pos = 0;
    for (const auto& [route, ids] : batches) {
      run_route(route, ids, status.data_ptr<int>() + pos, status.data_ptr<int>() + total + pos);
      pos += static_cast<int64_t>(ids.size());
    }
    const at::Tensor host = status.cpu();  // the host sync of this phase (one D2H copy)
    const int* h = host.data_ptr<int>();
    std::map<RouteCode, std::vector<int>> next;
    pos = 0;
    for (const auto& [route, ids] : batches) {
      for (int i : ids) {
        const int info = h[pos], ill = h[total + pos];
        ++pos;
        TORCH_CHECK(info >= 0, "svs.refine (CUDA): internal error: route ", kRouteNames[route],
                    " reported info ", info, " (invalid argument) for weights[", mat(i).index,
                    "] of shape (", mat(i).m, ", ", mat(i).n, ")");
        TORCH_CHECK(info == 0 || route != kRouteCudaExact, "svs.refine (CUDA): the SVD of weights[",
                    mat(i).index, "] (", mat(i).m, "x", mat(i).n, ") did not converge (gesvd info ",
                    info, ")");
        if (info == 0 && ill == 0) continue;
        // A float32 Gram route: not converged, or over the output's error budget: the float64
        // Gram route, as without the float32 plan.
        if (is_float32_route(route)) {
          next[float64_form(route)].push_back(i);
          continue;
        }
        // Not converged, or outside the Gram route's accuracy range: the exact SVD. (Not gesvdj:
        // Jacobi may not converge on large ill-conditioned matrices either, and is slower there.)
        next[kRouteCudaExact].push_back(i);
      }
    }
    pending = std::move(next);
  }
  threshold_svd_factors();
  if (spectra != nullptr) export_spectra(*spectra);

  std::vector<at::Tensor> u, s, vh, out;
  materialise(u, s, vh);
  for (int i = 0; i < count; ++i) out.push_back(outputs[mat(i).index].view({mat(i).m, mat(i).n}));
  static auto reconstruct = c10::Dispatcher::singleton()
                                .findSchemaOrThrow("svs::_reconstruct", "")
                                .typed<ReconstructFn>();
  reconstruct.call(u, s, vh, out, static_cast<int64_t>(map_.kind), map_.power);
}

}  // namespace cuda
}  // namespace svs
