// Rotary position embedding on CPU, fused forward and backward, both pair layouts.
//
//   Rope{Half,Inter}Fwd(x [B, N, S, D], cos [Bc, 1, S, D], sin [Bc, 1, S, D]) -> out [B, N, S, D]
//   Rope{Half,Inter}Bwd(x, cos, sin, dout) -> (dx, dcos, dsin)   (Bc = 1 or B)
// out = x * cos + rot(x) * sin with
//   Half  (rotate_half): rot(x)[i] = -x[i + D/2], rot(x)[i + D/2] = x[i]
//   Inter (interleaved): rot(x)[2i] = -x[2i + 1], rot(x)[2i + 1] = x[2i]
// dx = dout * cos + rot^T(dout * sin)   (rot^T = -rot: the rotation is antisymmetric)
// dcos = sum over (n, and b when Bc = 1) of dout * x;  dsin = the same of dout * rot(x).
// The tables are usually constants (built from integer positions), but their gradients are exact
// so the op is a drop-in for the reference composition. Work is split over (table row, s) pairs, so
// dcos/dsin rows are private to one thread (no atomics).
#include <omp.h>

#include "aot_common.h"

using namespace aot;

namespace {

struct Dims {
  int64_t B, N, S, D, Bc;
  bool init(int nparam, int expected, int* ndims, int64_t** shapes, const char** dtypes) {
    if (nparam != expected || !all_f32(expected, dtypes)) return false;
    if (ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4) return false;
    B = shapes[0][0], N = shapes[0][1], S = shapes[0][2], D = shapes[0][3], Bc = shapes[1][0];
    if (D % 2 || (Bc != 1 && Bc != B) || shapes[1][1] != 1 || shapes[1][2] != S || shapes[1][3] != D)
      return false;
    for (int k = 0; k < 4; ++k)
      if (shapes[2][k] != shapes[1][k]) return false;
    return true;
  }
};

// rot(x) of one row into r (interleaved or rotate-half), sign folded in.
template <bool kHalf>
inline void rotate(const float* x, float* r, int64_t D) {
  if (kHalf) {
    const int64_t h = D / 2;
#pragma omp simd
    for (int64_t i = 0; i < h; ++i) {
      r[i] = -x[i + h];
      r[i + h] = x[i];
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < D; i += 2) {
      r[i] = -x[i + 1];
      r[i + 1] = x[i];
    }
  }
}

template <bool kHalf>
int fwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  Dims d;
  if (!d.init(nparam, 4, ndims, shapes, dtypes)) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* cs = static_cast<const float*>(params[1]);
  const float* sn = static_cast<const float*>(params[2]);
  float* out = static_cast<float*>(params[3]);
  const int64_t D = d.D, rows = d.B * d.N * d.S;
#pragma omp parallel for schedule(static) num_threads(aot::threads())
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t s = row % d.S, b = row / (d.N * d.S);
    const int64_t t = ((d.Bc == 1 ? 0 : b) * d.S + s) * D;
    const float* xr = x + row * D;
    float* o = out + row * D;
    if (kHalf) {
      const int64_t h = D / 2;
#pragma omp simd
      for (int64_t i = 0; i < h; ++i) {
        o[i] = xr[i] * cs[t + i] - xr[i + h] * sn[t + i];
        o[i + h] = xr[i + h] * cs[t + i + h] + xr[i] * sn[t + i + h];
      }
    } else {
#pragma omp simd
      for (int64_t i = 0; i < D; i += 2) {
        o[i] = xr[i] * cs[t + i] - xr[i + 1] * sn[t + i];
        o[i + 1] = xr[i + 1] * cs[t + i + 1] + xr[i] * sn[t + i + 1];
      }
    }
  }
  return 0;
}

template <bool kHalf>
int bwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  Dims d;
  if (!d.init(nparam, 7, ndims, shapes, dtypes)) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* cs = static_cast<const float*>(params[1]);
  const float* sn = static_cast<const float*>(params[2]);
  const float* dout = static_cast<const float*>(params[3]);
  float* dx = static_cast<float*>(params[4]);
  float* dcos = static_cast<float*>(params[5]);
  float* dsin = static_cast<float*>(params[6]);
  const int64_t D = d.D, pairs = d.Bc * d.S;
  const int64_t nb = d.Bc == 1 ? d.B : 1;  // batches folded into one table row
#pragma omp parallel num_threads(aot::threads())
  {
    float* tmp = new float[2 * D];
    float* z = tmp;      // dout * sin
    float* rz = tmp + D; // rot(x) or rot^T(dout * sin)
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pairs; ++p) {
      const int64_t bc = p / d.S, s = p % d.S, t = p * D;
      float* dc = dcos + t;
      float* ds = dsin + t;
      for (int64_t i = 0; i < D; ++i) dc[i] = 0.f, ds[i] = 0.f;
      for (int64_t bi = 0; bi < nb; ++bi) {
        const int64_t b = d.Bc == 1 ? bi : bc;
        for (int64_t n = 0; n < d.N; ++n) {
          const int64_t row = ((b * d.N + n) * d.S + s) * D;
          const float* xr = x + row;
          const float* g = dout + row;
          float* dxr = dx + row;
          rotate<kHalf>(xr, rz, D);
#pragma omp simd
          for (int64_t i = 0; i < D; ++i) {
            dc[i] += g[i] * xr[i];
            ds[i] += g[i] * rz[i];
            z[i] = g[i] * sn[t + i];
          }
          rotate<kHalf>(z, rz, D);  // rot^T(z) = -rot(z)
#pragma omp simd
          for (int64_t i = 0; i < D; ++i) dxr[i] = g[i] * cs[t + i] - rz[i];
        }
      }
    }
    delete[] tmp;
  }
  return 0;
}

}  // namespace

#define ROPE_ENTRY(NAME, FN, HALF)                                                                   \
  extern "C" int NAME(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, \
                      void* stream, void* extra) {                                                  \
    (void)stream, (void)extra;                                                                      \
    return FN<HALF>(nparam, params, ndims, shapes, dtypes);                                         \
  }
ROPE_ENTRY(RopeHalfFwd, fwd, true)
ROPE_ENTRY(RopeInterFwd, fwd, false)
ROPE_ENTRY(RopeHalfBwd, bwd, true)
ROPE_ENTRY(RopeInterBwd, bwd, false)
