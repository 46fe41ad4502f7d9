// FastAttention for CPU: FlashAttention-2 style tiled attention with an online softmax,
// exposed as two MindSpore `ops.Custom(func_type="aot")` entry points.
//
//   FastAttnFwd(q, k, v, seg, cfg) -> (out, lse)
//   FastAttnBwd(q, k, v, seg, cfg, out, lse, dout) -> (dq, dk, dv)
//
// Shapes (row-major, contiguous):
//   q [B, N, S, Dqk]   k [B, Nkv, S, Dqk]   v [B, Nkv, S, Dv]   seg [B, S] int32
//   cfg [4] float32 = (causal, scale, block_q, block_k)
//   out [B, N, S, Dv]  lse [B, N, S] (natural-log log-sum-exp of the scaled scores; +inf on fully
//   masked rows, so that exp(s - lse) == 0 there in the backward).
// Query head h reads kv head h / (N / Nkv) (GQA); dK/dV sum over the heads of a group.
// Attention is allowed between i and j iff seg[i] == seg[j] != 0 and (!causal || j <= i).
//
// Two-level tiling. Outer tiles: block_q query rows x block_k keys (runtime parameters), the unit of
// mask classification (skip / full / partial) and of the online softmax; their operands are copied
// into small zero-padded scratch buffers that stay in L1/L2. Inner tiles: a 4-row x 2-vector register
// block inside `gemm` (compile-time, sized to the SIMD width the compiler targets). All GEMM operands
// are padded to a multiple of that inner tile so no scalar tail loops are needed.
// Forward: work items are (batch, head, query tile), K^T is transposed once per kv head.
// Backward: work items are key tiles (dK/dV private to the tile); dQ is accumulated either directly
// (threads own whole (batch, kv head) pairs) or in per-thread buffers summed at the end (B*Nkv small).
//
// Portability: the code uses GCC vector extensions only; they compile for any x86/ARM target
// (wider-than-native vectors are split by the compiler). The builder chooses the -march flags.
#include <omp.h>

#include "aot_common.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// SIMD width, vector types, loads/stores and the vector exp come from ops/csrc/aot_common.h.
using aot::kW;
using aot::vexp;
using aot::vf;
using aot::vi;
using aot::vload;
using aot::vset1;
using aot::vstore;

constexpr int kNB = 2 * kW;  // inner tile width (columns); also the padding unit of every buffer
constexpr int kMB = 4;       // inner tile height (rows)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kPosInf = std::numeric_limits<float>::infinity();

enum TileKind { kSkip = 0, kFull = 1, kPartial = 2 };

inline float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < kW; ++i) m = std::max(m, v[i]);
  return m;
}
inline float hsum(vf v) {
  float s = 0.f;
  for (int i = 0; i < kW; ++i) s += v[i];
  return s;
}
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// C[M][N] (+)= A[M][K] * B[K][N]; row strides lda/ldb/ldc. M % kMB == 0, N % kNB == 0.
void gemm(float* C, int64_t ldc, const float* A, int64_t lda, const float* B, int64_t ldb, int64_t M,
          int64_t K, int64_t N, bool accumulate) {
  for (int64_t i = 0; i < M; i += kMB) {
    const float* a0 = A + i * lda;
    const float* a1 = a0 + lda;
    const float* a2 = a1 + lda;
    const float* a3 = a2 + lda;
    for (int64_t j = 0; j < N; j += kNB) {
      float* c = C + i * ldc + j;
      vf c00, c01, c10, c11, c20, c21, c30, c31;
      if (accumulate) {
        c00 = vload(c), c01 = vload(c + kW);
        c10 = vload(c + ldc), c11 = vload(c + ldc + kW);
        c20 = vload(c + 2 * ldc), c21 = vload(c + 2 * ldc + kW);
        c30 = vload(c + 3 * ldc), c31 = vload(c + 3 * ldc + kW);
      } else {
        c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = vset1(0.f);
      }
      const float* b = B + j;
      for (int64_t k = 0; k < K; ++k, b += ldb) {
        const vf b0 = vload(b), b1 = vload(b + kW);
        vf x = vset1(a0[k]);
        c00 += x * b0, c01 += x * b1;
        x = vset1(a1[k]);
        c10 += x * b0, c11 += x * b1;
        x = vset1(a2[k]);
        c20 += x * b0, c21 += x * b1;
        x = vset1(a3[k]);
        c30 += x * b0, c31 += x * b1;
      }
      vstore(c, c00), vstore(c + kW, c01);
      vstore(c + ldc, c10), vstore(c + ldc + kW, c11);
      vstore(c + 2 * ldc, c20), vstore(c + 2 * ldc + kW, c21);
      vstore(c + 3 * ldc, c30), vstore(c + 3 * ldc + kW, c31);
    }
  }
}

// dst[cols][rows] = src[rows][cols] (both padded, leading dims given).
void transpose(float* dst, int64_t ldd, const float* src, int64_t lds, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}

// Copy `n` rows of width `d` (stride `ld_src`) into a zero-padded [rows_pad][d_pad] buffer.
void copy_pad(float* dst, int64_t rows_pad, int64_t d_pad, const float* src, int64_t n, int64_t d,
              int64_t ld_src) {
  std::memset(dst, 0, sizeof(float) * rows_pad * d_pad);
  for (int64_t r = 0; r < n; ++r) std::memcpy(dst + r * d_pad, src + r * ld_src, sizeof(float) * d);
}

// Copy `n` rows of width `d` transposed into a zero-padded [d][n_pad] buffer.
void copy_transpose_pad(float* dst, int64_t n_pad, const float* src, int64_t n, int64_t d) {
  std::memset(dst, 0, sizeof(float) * d * n_pad);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < d; ++c) dst[c * n_pad + r] = src[r * d + c];
}

struct AlignedBuf {
  float* p = nullptr;
  explicit AlignedBuf(int64_t n) {
    size_t bytes = round_up(std::max<int64_t>(n, 1) * sizeof(float), 64);
    p = static_cast<float*>(std::aligned_alloc(64, bytes));
  }
  ~AlignedBuf() { std::free(p); }
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
};

struct Problem {
  int64_t B, N, Nkv, G, S, Dqk, Dv;
  bool causal;
  float scale;
  int64_t Br, Bc, nQB, nKB;               // outer tile sizes and counts
  int64_t BrP, BcP, DqkP, DvP;            // padded sizes
  const int32_t* seg;
  std::vector<int32_t> qmin, qmax, kmin, kmax;  // per (batch, tile) segment-id ranges

  bool init(int nparam, int expected, int* ndims, int64_t** shapes, const char** dtypes,
            void** params) {
    if (nparam != expected) return false;
    for (int i : {0, 1, 2, 4})
      if (std::strcmp(dtypes[i], "float32") != 0) return false;
    if (std::strcmp(dtypes[3], "int32") != 0) return false;
    if (ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4 || ndims[3] != 2) return false;
    B = shapes[0][0], N = shapes[0][1], S = shapes[0][2], Dqk = shapes[0][3];
    Nkv = shapes[1][1], Dv = shapes[2][3];
    if (Nkv <= 0 || N % Nkv != 0 || shapes[1][3] != Dqk || shapes[1][2] != S || shapes[2][2] != S)
      return false;
    G = N / Nkv;
    const float* cfg = static_cast<const float*>(params[4]);
    causal = cfg[0] != 0.f;
    scale = cfg[1];
    Br = std::max<int64_t>(1, std::min<int64_t>(static_cast<int64_t>(cfg[2]), S));
    Bc = std::max<int64_t>(1, std::min<int64_t>(static_cast<int64_t>(cfg[3]), S));
    nQB = (S + Br - 1) / Br, nKB = (S + Bc - 1) / Bc;
    BrP = round_up(Br, kNB), BcP = round_up(Bc, kNB);
    DqkP = round_up(Dqk, kNB), DvP = round_up(Dv, kNB);
    seg = static_cast<const int32_t*>(params[3]);
    ranges(Br, nQB, &qmin, &qmax);
    ranges(Bc, nKB, &kmin, &kmax);
    return true;
  }

  void ranges(int64_t blk, int64_t nb, std::vector<int32_t>* mn, std::vector<int32_t>* mx) const {
    mn->assign(B * nb, 0), mx->assign(B * nb, 0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < nb; ++t) {
        const int32_t* s = seg + b * S + t * blk;
        int64_t n = std::min(blk, S - t * blk);
        int32_t lo = s[0], hi = s[0];
        for (int64_t i = 1; i < n; ++i) lo = std::min(lo, s[i]), hi = std::max(hi, s[i]);
        (*mn)[b * nb + t] = lo, (*mx)[b * nb + t] = hi;
      }
  }

  // Classify the outer tile (query tile qb, key tile kb) of batch b from precomputed ranges only.
  TileKind kind(int64_t b, int64_t qb, int64_t kb) const {
    const int64_t i0 = qb * Br, i1 = std::min(S, i0 + Br) - 1;
    const int64_t j0 = kb * Bc, j1 = std::min(S, j0 + Bc) - 1;
    if (causal && j0 > i1) return kSkip;  // entirely above the diagonal
    const int32_t qlo = qmin[b * nQB + qb], qhi = qmax[b * nQB + qb];
    const int32_t klo = kmin[b * nKB + kb], khi = kmax[b * nKB + kb];
    if (qhi == 0 || khi == 0) return kSkip;   // only padding on one side (ids are >= 0)
    if (qhi < klo || khi < qlo) return kSkip;  // segment ranges do not intersect
    const bool below_diag = !causal || j1 <= i0;
    if (below_diag && qlo == qhi && klo == khi && qlo == klo) return kFull;
    return kPartial;
  }

  // Elementwise mask of a partial tile row: allowed(i, j) for j in [j0, j0 + nc).
  inline bool allowed(int64_t b, int64_t i, int64_t j) const {
    const int32_t si = seg[b * S + i];
    return si != 0 && si == seg[b * S + j] && (!causal || j <= i);
  }
};

// Set masked / padded score entries of one row to -inf (scores already scaled).
inline void mask_row(const Problem& P, TileKind kind, int64_t b, int64_t i, int64_t j0, int64_t nc,
                     float* s) {
  if (kind == kPartial)
    for (int64_t c = 0; c < nc; ++c)
      if (!P.allowed(b, i, j0 + c)) s[c] = kNegInf;
  for (int64_t c = nc; c < P.BcP; ++c) s[c] = kNegInf;
}

}  // namespace

extern "C" int FastAttnFwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                           void* stream, void* extra) {
  (void)stream, (void)extra;
  Problem P;
  if (!P.init(nparam, 7, ndims, shapes, dtypes, params)) return 1;
  const float* q = static_cast<const float*>(params[0]);
  const float* k = static_cast<const float*>(params[1]);
  const float* v = static_cast<const float*>(params[2]);
  float* out = static_cast<float*>(params[5]);
  float* lse = static_cast<float*>(params[6]);
  const int64_t S = P.S, Dqk = P.Dqk, Dv = P.Dv, BrP = P.BrP, BcP = P.BcP, DqkP = P.DqkP,
                DvP = P.DvP;
  const int64_t total = P.B * P.N * P.nQB;
  const int64_t pairs = P.B * P.Nkv;

  // K^T of every kv head, transposed once ([pairs][Dqk][ldk], zero-padded columns) so each tile's
  // Q K^T reads a column window of it instead of re-transposing the key tile per query tile.
  // The +kW on the row stride keeps rows off the same L1 set when S is a power of two.
  const int64_t ldk = (P.nKB - 1) * P.Bc + BcP + kW;
  std::vector<float> kt_all(static_cast<size_t>(pairs) * Dqk * ldk, 0.f);
#pragma omp parallel for schedule(static) num_threads(aot::threads())
  for (int64_t pr = 0; pr < pairs; ++pr) {
    const float* kp = k + pr * S * Dqk;
    float* dst = kt_all.data() + pr * Dqk * ldk;
    for (int64_t j0 = 0; j0 < S; j0 += 64)  // blocked so reads and writes both stay in cache
      for (int64_t d = 0; d < Dqk; ++d)
        for (int64_t j = j0; j < std::min(S, j0 + 64); ++j) dst[d * ldk + j] = kp[j * Dqk + d];
  }
  const bool v_direct = DvP == Dv;  // V tiles can be read in place when rows are vector-aligned

#pragma omp parallel num_threads(aot::threads())
  {
    AlignedBuf qbuf(BrP * DqkP), vb(v_direct ? 1 : BcP * DvP), sb(BrP * BcP), acc(BrP * DvP);
    std::vector<float> m(BrP), l(BrP);
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < total; ++w) {
      const int64_t qb = w % P.nQB, bh = w / P.nQB, h = bh % P.N, b = bh / P.N, kvh = h / P.G;
      const int64_t i0 = qb * P.Br, nr = std::min(P.Br, S - i0);
      copy_pad(qbuf.p, BrP, DqkP, q + (bh * S + i0) * Dqk, nr, Dqk, Dqk);
      std::fill(m.begin(), m.end(), kNegInf);
      std::fill(l.begin(), l.end(), 0.f);
      std::memset(acc.p, 0, sizeof(float) * BrP * DvP);
      const float* kt = kt_all.data() + (b * P.Nkv + kvh) * Dqk * ldk;
      for (int64_t kb = 0; kb < P.nKB; ++kb) {
        const TileKind kind = P.kind(b, qb, kb);
        if (kind == kSkip) continue;
        const int64_t j0 = kb * P.Bc, nc = std::min(P.Bc, S - j0);
        const int64_t kvoff = (b * P.Nkv + kvh) * S + j0;
        const float* vt = v + kvoff * Dv;
        if (!v_direct) {
          copy_pad(vb.p, BcP, DvP, v + kvoff * Dv, nc, Dv, Dv);
          vt = vb.p;
        }
        gemm(sb.p, BcP, qbuf.p, DqkP, kt + j0, ldk, BrP, Dqk, BcP, false);
        // Online softmax: rescale the running sum/accumulator to the new row max, turn S into P.
        for (int64_t r = 0; r < nr; ++r) {
          float* s = sb.p + r * BcP;
          vf mx = vset1(kNegInf);
          for (int64_t c = 0; c < BcP; c += kW) vstore(s + c, vload(s + c) * P.scale);
          mask_row(P, kind, b, i0 + r, j0, nc, s);
          for (int64_t c = 0; c < BcP; c += kW) mx = mx > vload(s + c) ? mx : vload(s + c);
          const float mnew = std::max(m[r], hmax(mx));
          if (mnew == kNegInf) {  // nothing visible yet for this row
            std::memset(s, 0, sizeof(float) * BcP);
            continue;
          }
          const vf mv = vset1(mnew);
          vf sum = vset1(0.f);
          for (int64_t c = 0; c < BcP; c += kW) {
            const vf p = vexp(vload(s + c) - mv);
            vstore(s + c, p);
            sum += p;
          }
          const float alpha = std::exp(m[r] - mnew);  // 0 when m[r] == -inf
          l[r] = l[r] * alpha + hsum(sum);
          m[r] = mnew;
          if (alpha != 1.f) {
            float* a = acc.p + r * DvP;
            const vf av = vset1(alpha);
            for (int64_t c = 0; c < DvP; c += kW) vstore(a + c, vload(a + c) * av);
          }
        }
        for (int64_t r = nr; r < BrP; ++r) std::memset(sb.p + r * BcP, 0, sizeof(float) * BcP);
        gemm(acc.p, DvP, sb.p, BcP, vt, DvP, BrP, nc, DvP, true);
      }
      for (int64_t r = 0; r < nr; ++r) {
        float* o = out + (bh * S + i0 + r) * Dv;
        if (l[r] > 0.f) {
          const float inv = 1.f / l[r];
          for (int64_t c = 0; c < Dv; ++c) o[c] = acc.p[r * DvP + c] * inv;
          lse[bh * S + i0 + r] = m[r] + std::log(l[r]);
        } else {  // fully masked row (padding): output 0, lse=+inf makes every P entry 0
          std::memset(o, 0, sizeof(float) * Dv);
          lse[bh * S + i0 + r] = kPosInf;
        }
      }
    }
  }
  return 0;
}

namespace {

struct BwdScratch {
  AlignedBuf kb, kt, vt, dk, dv, qbuf, dobuf, p, pt, dp, dst, dq;
  explicit BwdScratch(const Problem& P)
      : kb(P.BcP * P.DqkP), kt(P.Dqk * P.BcP), vt(P.Dv * P.BcP), dk(P.BcP * P.DqkP),
        dv(P.BcP * P.DvP), qbuf(P.BrP * P.DqkP), dobuf(P.BrP * P.DvP), p(P.BrP * P.BcP),
        pt(P.BcP * P.BrP), dp(P.BrP * P.BcP), dst(P.BcP * P.BrP), dq(P.BrP * P.DqkP) {}
};

// Backward of one key tile `kbi` of kv head `kvh` in batch `b`, over all query heads of its group and
// all visible query tiles (FlashAttention-2: dK/dV stay in registers/L1-resident buffers, dQ is
// accumulated into `dq_base` + g * dq_head_stride + row * Dqk).
void bwd_key_tile(const Problem& P, int64_t b, int64_t kvh, int64_t kbi, const float* q, const float* k,
                  const float* v, const float* lse, const float* dout, const float* delta,
                  float* dq_base, int64_t dq_head_stride, float* dk, float* dv, BwdScratch* w) {
  const int64_t S = P.S, Dqk = P.Dqk, Dv = P.Dv, BrP = P.BrP, BcP = P.BcP, DqkP = P.DqkP,
                DvP = P.DvP;
  const int64_t j0 = kbi * P.Bc, nc = std::min(P.Bc, S - j0);
  const int64_t kvoff = (b * P.Nkv + kvh) * S + j0;
  std::memset(w->dk.p, 0, sizeof(float) * BcP * DqkP);
  std::memset(w->dv.p, 0, sizeof(float) * BcP * DvP);
  bool loaded = false;
  for (int64_t g = 0; g < P.G; ++g) {
    const int64_t bh = b * P.N + kvh * P.G + g;
    const int64_t qb_first = P.causal ? j0 / P.Br : 0;
    for (int64_t qb = qb_first; qb < P.nQB; ++qb) {
      const TileKind kind = P.kind(b, qb, kbi);
      if (kind == kSkip) continue;
      if (!loaded) {
        copy_pad(w->kb.p, BcP, DqkP, k + kvoff * Dqk, nc, Dqk, Dqk);
        copy_transpose_pad(w->kt.p, BcP, k + kvoff * Dqk, nc, Dqk);
        copy_transpose_pad(w->vt.p, BcP, v + kvoff * Dv, nc, Dv);
        loaded = true;
      }
      const int64_t i0 = qb * P.Br, nr = std::min(P.Br, S - i0);
      copy_pad(w->qbuf.p, BrP, DqkP, q + (bh * S + i0) * Dqk, nr, Dqk, Dqk);
      copy_pad(w->dobuf.p, BrP, DvP, dout + (bh * S + i0) * Dv, nr, Dv, Dv);
      // P = exp(scale * Q K^T - lse), recomputed from the saved log-sum-exp.
      gemm(w->p.p, BcP, w->qbuf.p, DqkP, w->kt.p, BcP, BrP, Dqk, BcP, false);
      for (int64_t r = 0; r < BrP; ++r) {
        float* s = w->p.p + r * BcP;
        const float L = r < nr ? lse[bh * S + i0 + r] : kPosInf;
        if (L == kPosInf) {
          std::memset(s, 0, sizeof(float) * BcP);
          continue;
        }
        const vf sc = vset1(P.scale), lv = vset1(L);
        for (int64_t c = 0; c < BcP; c += kW) vstore(s + c, vload(s + c) * sc - lv);
        mask_row(P, kind, b, i0 + r, j0, nc, s);
        for (int64_t c = 0; c < BcP; c += kW) vstore(s + c, vexp(vload(s + c)));
      }
      // dV += P^T dO
      transpose(w->pt.p, BrP, w->p.p, BcP, BrP, BcP);
      gemm(w->dv.p, DvP, w->pt.p, BrP, w->dobuf.p, DvP, BcP, nr, DvP, true);
      // dP = dO V^T ; dS = P * (dP - D) * scale  (scale folded in so dQ/dK need no extra pass)
      gemm(w->dp.p, BcP, w->dobuf.p, DvP, w->vt.p, BcP, BrP, Dv, BcP, false);
      for (int64_t r = 0; r < BrP; ++r) {
        float* ds = w->dp.p + r * BcP;
        const float* pr = w->p.p + r * BcP;
        const vf dv_ = vset1(r < nr ? delta[bh * S + i0 + r] : 0.f), sc = vset1(P.scale);
        for (int64_t c = 0; c < BcP; c += kW)
          vstore(ds + c, vload(pr + c) * (vload(ds + c) - dv_) * sc);
      }
      // dK += dS^T Q ; dQ += dS K
      transpose(w->dst.p, BrP, w->dp.p, BcP, BrP, BcP);
      gemm(w->dk.p, DqkP, w->dst.p, BrP, w->qbuf.p, DqkP, BcP, nr, DqkP, true);
      gemm(w->dq.p, DqkP, w->dp.p, BcP, w->kb.p, DqkP, BrP, nc, DqkP, false);
      float* dqg = dq_base + g * dq_head_stride + i0 * Dqk;
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t c = 0; c < Dqk; ++c) dqg[r * Dqk + c] += w->dq.p[r * DqkP + c];
    }
  }
  for (int64_t c = 0; c < nc; ++c) {
    std::memcpy(dk + (kvoff + c) * Dqk, w->dk.p + c * DqkP, sizeof(float) * Dqk);
    std::memcpy(dv + (kvoff + c) * Dv, w->dv.p + c * DvP, sizeof(float) * Dv);
  }
}

}  // namespace

extern "C" int FastAttnBwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                           void* stream, void* extra) {
  (void)stream, (void)extra;
  Problem P;
  if (!P.init(nparam, 11, ndims, shapes, dtypes, params)) return 1;
  const float* q = static_cast<const float*>(params[0]);
  const float* k = static_cast<const float*>(params[1]);
  const float* v = static_cast<const float*>(params[2]);
  const float* out = static_cast<const float*>(params[5]);
  const float* lse = static_cast<const float*>(params[6]);
  const float* dout = static_cast<const float*>(params[7]);
  float* dq = static_cast<float*>(params[8]);
  float* dk = static_cast<float*>(params[9]);
  float* dv = static_cast<float*>(params[10]);
  const int64_t S = P.S, Dqk = P.Dqk, Dv = P.Dv, rows = P.B * P.N * S;

  // D = rowsum(dO * O) (FlashAttention-2 backward, eq. for dS = P * (dP - D)).
  std::vector<float> delta(rows);
#pragma omp parallel for schedule(static) num_threads(aot::threads())
  for (int64_t i = 0; i < rows; ++i) {
    float s = 0.f;
    for (int64_t c = 0; c < Dv; ++c) s += dout[i * Dv + c] * out[i * Dv + c];
    delta[i] = s;
  }
  std::memset(dq, 0, sizeof(float) * rows * Dqk);

  const int64_t pairs = P.B * P.Nkv;
  const int nthreads = aot::threads();
  if (pairs >= nthreads) {
    // Enough (batch, kv head) pairs: each thread owns whole pairs, so dQ/dK/dV writes never collide.
#pragma omp parallel num_threads(nthreads)
    {
      BwdScratch w(P);
#pragma omp for schedule(dynamic, 1)
      for (int64_t pr = 0; pr < pairs; ++pr) {
        const int64_t b = pr / P.Nkv, kvh = pr % P.Nkv;
        float* dq_base = dq + (b * P.N + kvh * P.G) * S * Dqk;
        for (int64_t kbi = 0; kbi < P.nKB; ++kbi)
          bwd_key_tile(P, b, kvh, kbi, q, k, v, lse, dout, delta.data(), dq_base, S * Dqk, dk, dv, &w);
      }
    }
  } else {
    // Few pairs (e.g. B = N = 1): split key tiles across threads; dQ goes to per-thread buffers that
    // are summed afterwards (O(threads * G * S * Dqk) extra memory, never O(S^2)).
    const int64_t group = P.G * S * Dqk;
    std::vector<float> priv(static_cast<size_t>(nthreads) * group);
    for (int64_t pr = 0; pr < pairs; ++pr) {
      const int64_t b = pr / P.Nkv, kvh = pr % P.Nkv;
      std::fill(priv.begin(), priv.end(), 0.f);
#pragma omp parallel num_threads(nthreads)
      {
        BwdScratch w(P);
        float* mine = priv.data() + omp_get_thread_num() * group;
#pragma omp for schedule(dynamic, 1)
        for (int64_t kbi = 0; kbi < P.nKB; ++kbi)
          bwd_key_tile(P, b, kvh, kbi, q, k, v, lse, dout, delta.data(), mine, S * Dqk, dk, dv, &w);
      }
      float* dq_base = dq + (b * P.N + kvh * P.G) * S * Dqk;
#pragma omp parallel for schedule(static) num_threads(nthreads)
      for (int64_t i = 0; i < group; ++i) {
        float s = 0.f;
        for (int t = 0; t < nthreads; ++t) s += priv[t * group + i];
        dq_base[i] = s;
      }
    }
  }
  return 0;
}
