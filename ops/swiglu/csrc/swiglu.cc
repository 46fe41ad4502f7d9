// SwiGLU on CPU: y = silu(g) * u = g * sigmoid(g) * u, one fused pass forward and backward.
//
//   SwigluFwd(g, u) -> y                 g, u, y: same shape, float32
//   SwigluBwd(g, u, dy) -> (dg, du)      recomputes sigmoid(g) instead of saving it
//   dg = dy * u * s * (1 + g * (1 - s)),  du = dy * g * s,  s = sigmoid(g)
// The composition reads/writes ~8 (fwd) / ~20 (bwd) full tensors; these kernels read 2 / 3 and
// write 1 / 2.
#include <omp.h>

#include "aot_common.h"

using namespace aot;

namespace {

template <class F>
void chunked(int64_t n, F body) {
  // Vector blocks in parallel; the scalar tail (< kW elements) is handled as one padded block.
  const int64_t nv = n / kW;
#pragma omp parallel for schedule(static) num_threads(aot::threads())
  for (int64_t b = 0; b < nv; ++b) body(b * kW, kW);
  if (n % kW) body(nv * kW, n % kW);
}

inline vf load_n(const float* p, int64_t m) {
  if (m == kW) return vload(p);
  float buf[kW] = {};
  std::memcpy(buf, p, sizeof(float) * m);
  return vload(buf);
}
inline void store_n(float* p, vf v, int64_t m) {
  if (m == kW) return vstore(p, v);
  float buf[kW];
  vstore(buf, v);
  std::memcpy(p, buf, sizeof(float) * m);
}

}  // namespace

extern "C" int SwigluFwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                         void* stream, void* extra) {
  (void)stream, (void)extra;
  if (nparam != 3 || !all_f32(3, dtypes)) return 1;
  const int64_t n = numel(ndims[0], shapes[0]);
  if (numel(ndims[1], shapes[1]) != n) return 1;
  const float* g = static_cast<const float*>(params[0]);
  const float* u = static_cast<const float*>(params[1]);
  float* y = static_cast<float*>(params[2]);
  chunked(n, [&](int64_t i, int64_t m) {
    vf gv = load_n(g + i, m);
    store_n(y + i, gv * vsigmoid(gv) * load_n(u + i, m), m);
  });
  return 0;
}

extern "C" int SwigluBwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                         void* stream, void* extra) {
  (void)stream, (void)extra;
  if (nparam != 5 || !all_f32(5, dtypes)) return 1;
  const int64_t n = numel(ndims[0], shapes[0]);
  if (numel(ndims[1], shapes[1]) != n || numel(ndims[2], shapes[2]) != n) return 1;
  const float* g = static_cast<const float*>(params[0]);
  const float* u = static_cast<const float*>(params[1]);
  const float* dy = static_cast<const float*>(params[2]);
  float* dg = static_cast<float*>(params[3]);
  float* du = static_cast<float*>(params[4]);
  chunked(n, [&](int64_t i, int64_t m) {
    vf gv = load_n(g + i, m), uv = load_n(u + i, m), dyv = load_n(dy + i, m);
    vf s = vsigmoid(gv);
    vf gs = gv * s;
    store_n(du + i, dyv * gs, m);
    store_n(dg + i, dyv * uv * (s + gs * (1.0f - s)), m);
  });
  return 0;
}
