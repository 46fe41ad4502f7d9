// AdamW on CPU: one pass over (param, m, v, grad) instead of ~18 elementwise graph ops.
//
//   AdamwUpdate(param, m, v, grad, hyper[8]) -> (param', m', v')      all float32, same shape
//     hyper = [lr, bias1, bias2, grad_scale, beta1, beta2, eps, weight_decay]
//     g  = grad * grad_scale
//     m' = beta1 m + (1 - beta1) g
//     v' = beta2 v + (1 - beta2) g^2
//     param' = param - lr ((m' / bias1) / (sqrt(v' / bias2) + eps) + weight_decay param)
//   SumSquares(x) -> [1]  sum of x^2 in double-free fp32 blocks (one read; no x^2 temporary)
//
// The graph composition reads and writes ~18 full tensors per parameter; AdamwUpdate reads 4 and
// writes 3. Same formula and operation order as the reference (ops/adamw/reference.py); results
// agree to float32 rounding (FMA contraction), not bit for bit.
#include <omp.h>

#include "aot_common.h"

using namespace aot;

extern "C" int AdamwUpdate(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                           void* stream, void* extra) {
  (void)stream, (void)extra;
  if (nparam != 8 || !all_f32(8, dtypes)) return 1;
  const int64_t n = numel(ndims[0], shapes[0]);
  for (int i = 1; i < 4; ++i)
    if (numel(ndims[i], shapes[i]) != n) return 1;
  if (numel(ndims[4], shapes[4]) != 8) return 1;
  const float* __restrict p = static_cast<const float*>(params[0]);
  const float* __restrict m = static_cast<const float*>(params[1]);
  const float* __restrict v = static_cast<const float*>(params[2]);
  const float* __restrict g = static_cast<const float*>(params[3]);
  const float* hy = static_cast<const float*>(params[4]);
  float* __restrict po = static_cast<float*>(params[5]);
  float* __restrict mo = static_cast<float*>(params[6]);
  float* __restrict vo = static_cast<float*>(params[7]);
  const float lr = hy[0], bias1 = hy[1], bias2 = hy[2], scale = hy[3];
  const float beta1 = hy[4], beta2 = hy[5], eps = hy[6], wd = hy[7];
  const float c1 = 1.0f - beta1, c2 = 1.0f - beta2;
  // Small tensors (norm weights, biases) are not worth waking the second thread.
#pragma omp parallel for simd schedule(static) num_threads(aot::threads()) if (n >= (int64_t)1 << 15)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i] * scale;
    const float mi = beta1 * m[i] + c1 * gi;
    const float vi = beta2 * v[i] + c2 * gi * gi;
    const float upd = (mi / bias1) / (std::sqrt(vi / bias2) + eps) + wd * p[i];
    mo[i] = mi;
    vo[i] = vi;
    po[i] = p[i] - lr * upd;
  }
  return 0;
}

extern "C" int SumSquares(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                          void* stream, void* extra) {
  (void)stream, (void)extra;
  if (nparam != 2 || !all_f32(2, dtypes)) return 1;
  const int64_t n = numel(ndims[0], shapes[0]);
  const float* x = static_cast<const float*>(params[0]);
  float* out = static_cast<float*>(params[1]);
  float total = 0.0f;
  if (n < (int64_t)1 << 15) {
#pragma omp simd reduction(+ : total)
    for (int64_t i = 0; i < n; ++i) total += x[i] * x[i];
  } else {
#pragma omp parallel for simd reduction(+ : total) schedule(static) num_threads(aot::threads())
    for (int64_t i = 0; i < n; ++i) total += x[i] * x[i];
  }
  out[0] = total;
  return 0;
}
