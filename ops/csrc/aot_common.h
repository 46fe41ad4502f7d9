// Shared helpers for the CPU aot kernels of ops/ (MindSpore `ops.Custom(func_type="aot")`).
//
// Entry-point signature (MindSpore aot ABI): inputs then outputs in `params`, with their ranks,
// shapes and dtype names:
//   extern "C" int Name(int nparam, void** params, int* ndims, int64_t** shapes,
//                       const char** dtypes, void* stream, void* extra);   // 0 = success
// All tensors arrive contiguous, row-major.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include <omp.h>

namespace aot {

// Threads of a kernel's OpenMP regions: PANGU_OPS_THREADS when set to a positive number, else 1.
// The kernels run inside MindSpore's CPU runtime, whose own thread pool keeps running (and
// spinning) next to an OpenMP team: on the 2-core machine a second kernel thread made the Pro bench
// step 1.47x SLOWER under load (docs/benchmarks.md). Read at every call (a getenv, ~100 ns), so a
// benchmark can switch it at run time.
inline int threads() {
  const char* s = std::getenv("PANGU_OPS_THREADS");
  const int n = s ? std::atoi(s) : 0;
  return n > 0 ? n : 1;
}

#if defined(__AVX512F__)
constexpr int kW = 16;
#elif defined(__AVX__)
constexpr int kW = 8;
#else
constexpr int kW = 4;
#endif

typedef float vf __attribute__((vector_size(kW * 4)));
typedef int32_t vi __attribute__((vector_size(kW * 4)));

inline vf vload(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(vf));
  return v;
}
inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof(vf)); }
inline vf vset1(float x) {
  vf v = {};
  return v + x;
}

// exp(x) for a vector (Cephes expf: x = n ln2 + r, degree-6 polynomial in r; ~1 ulp).
// Saturates at exp(88) above and returns exactly 0 below -87.
inline vf vexp(vf x) {
  const vf hi = vset1(88.0f);
  x = x > hi ? hi : x;
  vi tiny = x < vset1(-87.0f);
  vf xc = tiny ? vset1(-87.0f) : x;
  vf fx = xc * 1.44269504088896341f + 0.5f;
  vi t = __builtin_convertvector(fx, vi);
  vf tf = __builtin_convertvector(t, vf);
  tf = tf > fx ? tf - 1.0f : tf;  // floor
  vf r = xc - tf * 0.693359375f + tf * 2.12194440e-4f;
  vf r2 = r * r;
  vf p = vset1(1.9875691500E-4f);
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r2 + r + 1.0f;
  vi e = (__builtin_convertvector(tf, vi) + 127) << 23;
  vf y = p * (vf)e;
  return tiny ? vset1(0.f) : y;
}

// logistic sigmoid 1 / (1 + exp(-x)) for a vector.
inline vf vsigmoid(vf x) { return 1.0f / (1.0f + vexp(-x)); }

inline bool all_f32(int n, const char** dtypes) {
  for (int i = 0; i < n; ++i)
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  return true;
}

inline int64_t numel(int ndim, const int64_t* shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

}  // namespace aot
