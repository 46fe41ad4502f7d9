// RMSNorm on CPU, fused forward and backward over rows of length H.
//
//   RmsNormFwd(x [R, H], w [H], cfg [1] = (eps)) -> (y [R, H], rstd [R])
//   RmsNormBwd(x, w, rstd, dy) -> (dx [R, H], dw [H])
// r = 1 / sqrt(mean(x^2) + eps); y = x * r * w.
// dx = r * (dy * w) - x * r^3 * sum(dy * w * x) / H;  dw = sum over rows of dy * x * r.
// (R = product of the leading dims.) The composition makes ~7 passes forward and ~15 backward
// over [R, H] tensors; each kernel makes 2 (read x twice from cache-resident rows) and saves only
// rstd [R] for the backward. dw is reduced from per-thread partial sums (no atomics).
#include <omp.h>

#include <vector>

#include "aot_common.h"

using namespace aot;

namespace {

// sum_i a[i] * b[i] over n floats with kW-wide partial sums (double for the final tail only).
inline float dot(const float* a, const float* b, int64_t n) {
  vf acc0 = vset1(0.f), acc1 = vset1(0.f);
  int64_t i = 0;
  for (; i + 2 * kW <= n; i += 2 * kW) {
    acc0 += vload(a + i) * vload(b + i);
    acc1 += vload(a + i + kW) * vload(b + i + kW);
  }
  for (; i + kW <= n; i += kW) acc0 += vload(a + i) * vload(b + i);
  acc0 += acc1;
  float s = 0.f;
  for (int k = 0; k < kW; ++k) s += acc0[k];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

extern "C" int RmsNormFwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                          void* stream, void* extra) {
  (void)stream, (void)extra;
  if (nparam != 5 || !all_f32(5, dtypes)) return 1;
  const int64_t H = shapes[0][ndims[0] - 1];
  const int64_t R = numel(ndims[0], shapes[0]) / H;
  if (numel(ndims[1], shapes[1]) != H) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  const float eps = static_cast<const float*>(params[2])[0];
  float* y = static_cast<float*>(params[3]);
  float* rstd = static_cast<float*>(params[4]);
#pragma omp parallel for schedule(static) num_threads(aot::threads())
  for (int64_t r = 0; r < R; ++r) {
    const float* xr = x + r * H;
    float* yr = y + r * H;
    const float rs = 1.0f / std::sqrt(dot(xr, xr, H) / static_cast<float>(H) + eps);
    rstd[r] = rs;
#pragma omp simd
    for (int64_t i = 0; i < H; ++i) yr[i] = xr[i] * rs * w[i];
  }
  return 0;
}

extern "C" int RmsNormBwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                          void* stream, void* extra) {
  (void)stream, (void)extra;
  if (nparam != 6 || !all_f32(6, dtypes)) return 1;
  const int64_t H = shapes[0][ndims[0] - 1];
  const int64_t R = numel(ndims[0], shapes[0]) / H;
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  const float* rstd = static_cast<const float*>(params[2]);
  const float* dy = static_cast<const float*>(params[3]);
  float* dx = static_cast<float*>(params[4]);
  float* dw = static_cast<float*>(params[5]);
  const int nt = aot::threads();
  std::vector<float> part(static_cast<size_t>(nt) * H, 0.f);
  const float inv_h = 1.0f / static_cast<float>(H);
#pragma omp parallel num_threads(nt)
  {
    float* pw = part.data() + static_cast<size_t>(omp_get_thread_num()) * H;
    std::vector<float> g(H);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      const float* xr = x + r * H;
      const float* dyr = dy + r * H;
      float* dxr = dx + r * H;
      const float rs = rstd[r];
#pragma omp simd
      for (int64_t i = 0; i < H; ++i) {
        g[i] = dyr[i] * w[i];
        pw[i] += dyr[i] * xr[i] * rs;
      }
      const float c = dot(g.data(), xr, H) * rs * rs * rs * inv_h;
#pragma omp simd
      for (int64_t i = 0; i < H; ++i) dxr[i] = rs * g[i] - xr[i] * c;
    }
  }
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t i = 0; i < H; ++i) {
    float s = 0.f;
    for (int t = 0; t < nt; ++t) s += part[static_cast<size_t>(t) * H + i];
    dw[i] = s;
  }
  return 0;
}
