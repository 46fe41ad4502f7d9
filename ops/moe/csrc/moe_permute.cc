// MoE token permutation on CPU: counting-sort plan, dispatch gather, combine (unpermute + weighted
// sum), each with its backward. Assignment a = t*K + k (token t, choice k), A = T*K; `order` [A]
// int32 lists the assignment of each expert-sorted row (a permutation of 0..A-1), `inv` its inverse.
//
//   MoeSortPlan(experts [T,K] int32, like_E [E] int32) -> (order [A] int32, counts [E] int32)
//       stable counting sort by expert (token order kept inside an expert): O(A + E).
//   MoePermute(x [T,H], order) -> xs [A,H]                xs[r] = x[order[r] / K]
//   MoePermuteBwd(x, order, dxs [A,H]) -> dx [T,H]        dx[t] = sum_k dxs[inv[t*K + k]]
//   MoeUnpermute(xs [A,H], order, w [T,K]) -> y [T,H]      y[t] = sum_k w[t,k] xs[inv[t*K + k]]
//   MoeUnpermuteBwd(xs, order, w, dy [T,H]) -> (dxs [A,H], dw [T,K])
//       dxs[r] = w[a] dy[a / K],  dw[a] = <dy[a / K], xs[r]>   with a = order[r]
// Because `order` is a permutation every output row is written by exactly one loop iteration: the
// backward passes are gathers (no scatter-add, no atomics), unlike the UnsortedSegmentSum that
// MindSpore's Gather backward runs. Parallel loops use aot::threads() (PANGU_OPS_THREADS, default 1).
#include <omp.h>

#include <vector>

#include "aot_common.h"

using namespace aot;

namespace {

// inv[order[r]] = r; false if `order` is not a permutation of 0..A-1.
bool invert(const int32_t* order, int64_t a, std::vector<int32_t>& inv) {
  inv.assign(a, -1);
  for (int64_t r = 0; r < a; ++r) {
    const int32_t o = order[r];
    if (o < 0 || o >= a || inv[o] >= 0) return false;
    inv[o] = static_cast<int32_t>(r);
  }
  return true;
}

inline void axpy(float* y, const float* x, float w, int64_t h) {
  for (int64_t j = 0; j < h; ++j) y[j] += w * x[j];
}

// kW-lane partial sums (a plain float loop does not vectorise without -ffast-math).
inline float dot(const float* x, const float* y, int64_t h) {
  vf acc = {};
  int64_t j = 0;
  for (; j + kW <= h; j += kW) acc += vload(x + j) * vload(y + j);
  float s = 0.f;
  for (int i = 0; i < kW; ++i) s += acc[i];
  for (; j < h; ++j) s += x[j] * y[j];
  return s;
}

bool is(const char* dtype, const char* want) { return std::strcmp(dtype, want) == 0; }

}  // namespace

extern "C" int MoeSortPlan(int nparam, void** params, int* ndims, int64_t** shapes,
                           const char** dtypes, void* stream, void* extra) {
  (void)stream, (void)extra;
  if (nparam != 4 || ndims[0] != 2 || !is(dtypes[0], "int32") || !is(dtypes[2], "int32") ||
      !is(dtypes[3], "int32"))
    return 1;
  const int64_t a = shapes[0][0] * shapes[0][1];
  const int64_t e = shapes[1][0];
  const int32_t* ex = static_cast<const int32_t*>(params[0]);
  int32_t* order = static_cast<int32_t*>(params[2]);
  int32_t* counts = static_cast<int32_t*>(params[3]);
  std::vector<int64_t> next(e + 1, 0);
  for (int64_t i = 0; i < a; ++i) {
    if (ex[i] < 0 || ex[i] >= e) return 1;
    ++next[ex[i] + 1];
  }
  for (int64_t j = 0; j < e; ++j) counts[j] = static_cast<int32_t>(next[j + 1]);
  for (int64_t j = 1; j <= e; ++j) next[j] += next[j - 1];   // next[j] = first row of expert j
  for (int64_t i = 0; i < a; ++i) order[next[ex[i]]++] = static_cast<int32_t>(i);
  return 0;
}

extern "C" int MoePermute(int nparam, void** params, int* ndims, int64_t** shapes,
                          const char** dtypes, void* stream, void* extra) {
  (void)stream, (void)extra;
  if (nparam != 3 || ndims[0] != 2 || !is(dtypes[0], "float32") || !is(dtypes[1], "int32"))
    return 1;
  const int64_t t = shapes[0][0], h = shapes[0][1], a = shapes[1][0];
  if (t == 0 || a % t) return a == 0 ? 0 : 1;
  const int64_t k = a / t;
  const float* x = static_cast<const float*>(params[0]);
  const int32_t* order = static_cast<const int32_t*>(params[1]);
  float* xs = static_cast<float*>(params[2]);
  bool ok = true;
#pragma omp parallel for schedule(static) num_threads(aot::threads()) reduction(&& : ok)
  for (int64_t r = 0; r < a; ++r) {
    const int64_t o = order[r];
    if (o < 0 || o >= a) {
      ok = false;
      continue;
    }
    std::memcpy(xs + r * h, x + (o / k) * h, sizeof(float) * h);
  }
  return ok ? 0 : 1;
}

extern "C" int MoePermuteBwd(int nparam, void** params, int* ndims, int64_t** shapes,
                             const char** dtypes, void* stream, void* extra) {
  (void)stream, (void)extra;
  if (nparam != 4 || ndims[0] != 2 || !is(dtypes[1], "int32") || !is(dtypes[2], "float32"))
    return 1;
  const int64_t t = shapes[0][0], h = shapes[0][1], a = shapes[1][0];
  if (t == 0) return 0;
  if (a % t) return 1;
  const int64_t k = a / t;
  const int32_t* order = static_cast<const int32_t*>(params[1]);
  const float* dxs = static_cast<const float*>(params[2]);
  float* dx = static_cast<float*>(params[3]);
  std::vector<int32_t> inv;
  if (!invert(order, a, inv)) return 1;
#pragma omp parallel for schedule(static) num_threads(aot::threads())
  for (int64_t i = 0; i < t; ++i) {
    float* d = dx + i * h;
    std::memcpy(d, dxs + static_cast<int64_t>(inv[i * k]) * h, sizeof(float) * h);
    for (int64_t c = 1; c < k; ++c) axpy(d, dxs + static_cast<int64_t>(inv[i * k + c]) * h, 1.f, h);
  }
  return 0;
}

extern "C" int MoeUnpermute(int nparam, void** params, int* ndims, int64_t** shapes,
                            const char** dtypes, void* stream, void* extra) {
  (void)stream, (void)extra;
  if (nparam != 4 || ndims[0] != 2 || ndims[2] != 2 || !is(dtypes[0], "float32") ||
      !is(dtypes[1], "int32") || !is(dtypes[2], "float32"))
    return 1;
  const int64_t a = shapes[0][0], h = shapes[0][1], t = shapes[2][0], k = shapes[2][1];
  if (shapes[1][0] != a || t * k != a) return 1;
  const float* xs = static_cast<const float*>(params[0]);
  const int32_t* order = static_cast<const int32_t*>(params[1]);
  const float* w = static_cast<const float*>(params[2]);
  float* y = static_cast<float*>(params[3]);
  std::vector<int32_t> inv;
  if (!invert(order, a, inv)) return 1;
#pragma omp parallel for schedule(static) num_threads(aot::threads())
  for (int64_t i = 0; i < t; ++i) {
    float* yi = y + i * h;
    const float w0 = w[i * k];
    const float* x0 = xs + static_cast<int64_t>(inv[i * k]) * h;
    for (int64_t j = 0; j < h; ++j) yi[j] = w0 * x0[j];
    for (int64_t c = 1; c < k; ++c) axpy(yi, xs + static_cast<int64_t>(inv[i * k + c]) * h, w[i * k + c], h);
  }
  return 0;
}

extern "C" int MoeUnpermuteBwd(int nparam, void** params, int* ndims, int64_t** shapes,
                               const char** dtypes, void* stream, void* extra) {
  (void)stream, (void)extra;
  if (nparam != 6 || ndims[0] != 2 || ndims[2] != 2 || !is(dtypes[0], "float32") ||
      !is(dtypes[1], "int32") || !is(dtypes[2], "float32") || !is(dtypes[3], "float32"))
    return 1;
  const int64_t a = shapes[0][0], h = shapes[0][1], t = shapes[2][0], k = shapes[2][1];
  if (shapes[1][0] != a || t * k != a) return 1;
  const float* xs = static_cast<const float*>(params[0]);
  const int32_t* order = static_cast<const int32_t*>(params[1]);
  const float* w = static_cast<const float*>(params[2]);
  const float* dy = static_cast<const float*>(params[3]);
  float* dxs = static_cast<float*>(params[4]);
  float* dw = static_cast<float*>(params[5]);
  bool ok = true;
#pragma omp parallel for schedule(static) num_threads(aot::threads()) reduction(&& : ok)
  for (int64_t r = 0; r < a; ++r) {
    const int64_t o = order[r];
    if (o < 0 || o >= a) {
      ok = false;
      continue;
    }
    const float* dyt = dy + (o / k) * h;
    const float* xr = xs + r * h;
    float* d = dxs + r * h;
    const float wo = w[o];
    for (int64_t j = 0; j < h; ++j) d[j] = wo * dyt[j];
    dw[o] = dot(dyt, xr, h);
  }
  return ok ? 0 : 1;
}
