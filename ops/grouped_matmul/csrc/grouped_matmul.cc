// Grouped matmul (MoE experts) on CPU: per-expert row-major GEMMs through oneDNN's dnnl_sgemm.
//
//   GmmFwd(x [A,K], w [E,N,K], counts [E] int32) -> y [A,N]
//       y[rows of e] = x[rows of e] @ w[e]^T; rows of e = [off_e, off_e + counts_e) with
//       off_e = counts_0 + ... + counts_{e-1}, clipped to [0, A); rows past the last expert give 0.
//   GmmBwd(x, w, counts, dy [A,N]) -> (dx [A,K], dw [E,N,K])
//       dx[rows of e] = dy[rows of e] @ w[e];  dw[e] = dy[rows of e]^T @ x[rows of e]
//       (one call for both, so one set of threads is balanced over all of the backward's work).
//
// dnnl_sgemm is the libdnnl.so.3 shipped in the mindspore wheel (ops/_build.py links it). That
// build uses oneDNN's threadpool runtime, so a dnnl_sgemm call without a threadpool runs on the
// calling thread (~the per-core peak). We parallelise over std::threads: measured here (2 cores),
// `#pragma omp parallel for` around the per-expert calls did not scale, std::thread did
// (docs/ops.md). The work (all GEMM rows of all experts) is cut into parts of equal FLOPs whatever
// the routing -- an expert's rows (fwd, dx) or dw's output rows may be split -- a few parts per
// thread, which the threads take from a shared counter: a thread slowed down by another process
// on the shared cores takes fewer parts instead of stalling the call.
// Threads: PANGU_GMM_THREADS if set, else std::thread::hardware_concurrency();
// parts per thread: PANGU_GMM_PARTS (tuning knob, default kPartsPerThread).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "aot_common.h"

extern "C" int dnnl_sgemm(char transa, char transb, int64_t M, int64_t N, int64_t K, float alpha,
                          const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                          float* C, int64_t ldc);

namespace {

// Below this many FLOPs per part, splitting costs more than it saves.
constexpr double kMinFlopsPerPart = 4e6;
constexpr int kPartsPerThread = 4;

int env_int(const char* name, int fallback) {
  const char* env = std::getenv(name);
  const int v = env ? std::atoi(env) : 0;
  return v > 0 ? v : fallback;
}

// Read at every call (a getenv, ~100 ns next to a GEMM of milliseconds), so a benchmark can switch
// them at run time.
int max_threads() {
  static const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  return env_int("PANGU_GMM_THREADS", cores);
}

int parts_per_thread() { return env_int("PANGU_GMM_PARTS", kPartsPerThread); }

// Persistent workers. Threads started per call were measured slower: oneDNN's GEMM packing buffers,
// malloc'ed in a fresh thread's fresh arena, page-faulted on every call (~1200 faults per forward
// call at the bench shape); long-lived workers reuse their buffers (~150). One job at a time: a
// caller that finds the pool busy (MindSpore running two kernels at once) runs its parts itself.
class Pool {
 public:
  // Run fn(0) .. fn(parts - 1) on the caller and threads - 1 workers, parts taken in order.
  void run(int parts, int threads, const std::function<void(int)>& fn) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (threads <= 1 || parts <= 1 || !busy.owns_lock()) {
      for (int p = 0; p < parts; ++p) fn(p);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(m_);
      while (static_cast<int>(threads_.size()) < threads - 1) {
        const int id = static_cast<int>(threads_.size()) + 1;
        threads_.emplace_back([this, id] { worker(id); });
      }
      job_ = &fn;
      parts_ = parts;
      active_ = threads;
      remaining_ = threads - 1;
      next_.store(0);
      ++generation_;
    }
    start_.notify_all();
    drain();
    std::unique_lock<std::mutex> lock(m_);
    done_.wait(lock, [this] { return remaining_ == 0; });
    job_ = nullptr;
  }

 private:
  void drain() {
    for (int p; (p = next_.fetch_add(1)) < parts_;) (*job_)(p);
  }

  void worker(int id) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      start_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (id >= active_) continue;
      lock.unlock();
      drain();
      lock.lock();
      if (--remaining_ == 0) done_.notify_one();
    }
  }

  std::mutex busy_, m_;
  std::condition_variable start_, done_;
  std::vector<std::thread> threads_;
  const std::function<void(int)>* job_ = nullptr;
  std::atomic<int> next_{0};
  int parts_ = 0, active_ = 0, remaining_ = 0;
  uint64_t generation_ = 0;
};

Pool& pool() {
  // Never destroyed (joinable threads must not be destructed at exit); a forked child gets a new one.
  static Pool* p = nullptr;
  static pid_t owner = 0;
  static std::mutex m;
  std::lock_guard<std::mutex> lock(m);
  if (p == nullptr || owner != getpid()) {
    p = new Pool;
    owner = getpid();
  }
  return *p;
}

// Row ranges [lo_e, hi_e) of each expert in x / y, clipped to A rows; `end` = first row of no
// expert. `ok` is false for a negative count (the caller reports a failure).
struct Groups {
  std::vector<int64_t> lo, hi;
  int64_t end = 0;
  bool ok = true;
  Groups(const int32_t* counts, int64_t e, int64_t a) : lo(e), hi(e) {
    for (int64_t i = 0; i < e; ++i) {
      ok = ok && counts[i] >= 0;
      lo[i] = end;
      end = std::min<int64_t>(a, end + std::max<int32_t>(counts[i], 0));
      hi[i] = end;
    }
  }
  int64_t rows(int64_t i) const { return hi[i] - lo[i]; }
};

// A run of `units` equal-cost work units (rows of one expert's GEMM); `run(u0, u1)` does [u0, u1).
struct Segment {
  int64_t units;
  double cost;  // FLOPs per unit
  int kind;     // 0 fwd rows, 1 dx rows, 2 dw output rows
  int64_t expert;
};

// Cut the concatenated segments into parts of ~equal cost (a few per thread) and run them on the
// pool. `body(segment, u0, u1)` runs units [u0, u1) of one segment.
template <class Body>
void run_balanced(const std::vector<Segment>& segs, Body body) {
  double total = 0;
  for (const Segment& s : segs) total += s.units * s.cost;
  if (total <= 0) return;
  const int threads = max_threads();
  const int np = static_cast<int>(std::max<double>(
      1, std::min<double>(threads * parts_per_thread(), total / kMinFlopsPerPart)));
  // cut[p] = (segment, unit) where part p starts: the first unit whose start cost >= p * total / np.
  std::vector<std::pair<size_t, int64_t>> cut(np + 1, {segs.size(), 0});
  cut[0] = {0, 0};
  {
    double acc = 0;
    int p = 1;
    for (size_t s = 0; s < segs.size() && p < np; ++s) {
      const Segment& g = segs[s];
      while (p < np) {
        const double target = total * p / np;
        if (acc + g.units * g.cost <= target) break;  // whole segment is before the cut
        const int64_t u = std::min<int64_t>(
            g.units, static_cast<int64_t>(std::ceil((target - acc) / g.cost)));
        cut[p++] = {s, u};
      }
      acc += g.units * g.cost;
    }
  }
  const std::function<void(int)> part = [&](int p) {
    auto [s0, u0] = cut[p];
    auto [s1, u1] = cut[p + 1];
    for (size_t s = s0; s < segs.size() && s <= s1; ++s) {
      const int64_t a = (s == s0) ? u0 : 0;
      const int64_t b = (s == s1) ? u1 : segs[s].units;
      if (b > a) body(segs[s], a, b);
    }
  };
  pool().run(np, std::min(threads, np), part);
}

bool f32_all(int n, const char** dtypes, int counts_index) {
  for (int i = 0; i < n; ++i)
    if (i != counts_index && std::strcmp(dtypes[i], "float32") != 0) return false;
  return std::strcmp(dtypes[counts_index], "int32") == 0;
}

}  // namespace

extern "C" int GmmFwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                      void* stream, void* extra) {
  (void)stream, (void)extra;
  if (nparam != 4 || !f32_all(4, dtypes, 2) || ndims[0] != 2 || ndims[1] != 3 || ndims[2] != 1)
    return 1;
  const int64_t a = shapes[0][0], k = shapes[0][1];
  const int64_t e = shapes[1][0], n = shapes[1][1];
  if (shapes[1][2] != k || shapes[2][0] != e) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  float* y = static_cast<float*>(params[3]);
  const Groups g(static_cast<const int32_t*>(params[2]), e, a);
  if (!g.ok) return 1;
  std::vector<Segment> segs;
  for (int64_t i = 0; i < e; ++i)
    if (g.rows(i) > 0) segs.push_back({g.rows(i), 2.0 * n * k, 0, i});
  std::memset(y + g.end * n, 0, sizeof(float) * (a - g.end) * n);   // rows past the last expert
  run_balanced(segs, [&](const Segment& s, int64_t u0, int64_t u1) {
    const int64_t r0 = g.lo[s.expert] + u0;
    dnnl_sgemm('N', 'T', u1 - u0, n, k, 1.0f, x + r0 * k, k, w + s.expert * n * k, k, 0.0f,
               y + r0 * n, n);
  });
  return 0;
}

extern "C" int GmmBwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                      void* stream, void* extra) {
  (void)stream, (void)extra;
  if (nparam != 6 || !f32_all(6, dtypes, 2) || ndims[0] != 2 || ndims[1] != 3 || ndims[2] != 1 ||
      ndims[3] != 2)
    return 1;
  const int64_t a = shapes[0][0], k = shapes[0][1];
  const int64_t e = shapes[1][0], n = shapes[1][1];
  if (shapes[1][2] != k || shapes[2][0] != e || shapes[3][0] != a || shapes[3][1] != n) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  const float* dy = static_cast<const float*>(params[3]);
  float* dx = static_cast<float*>(params[4]);
  float* dw = static_cast<float*>(params[5]);
  const Groups g(static_cast<const int32_t*>(params[2]), e, a);
  if (!g.ok) return 1;
  std::vector<Segment> segs;
  for (int64_t i = 0; i < e; ++i) {
    if (g.rows(i) > 0) {
      segs.push_back({g.rows(i), 2.0 * n * k, 1, i});           // dx rows of expert i
      segs.push_back({n, 2.0 * g.rows(i) * k, 2, i});           // dw[i] output rows
    } else {
      std::memset(dw + i * n * k, 0, sizeof(float) * n * k);    // expert without rows: dw = 0
    }
  }
  std::memset(dx + g.end * k, 0, sizeof(float) * (a - g.end) * k);  // rows past the last expert
  run_balanced(segs, [&](const Segment& s, int64_t u0, int64_t u1) {
    const int64_t lo = g.lo[s.expert], m = g.rows(s.expert);
    const float* we = w + s.expert * n * k;
    if (s.kind == 1) {  // dx[r0:r1] = dy[r0:r1] @ w[e]
      const int64_t r0 = lo + u0;
      dnnl_sgemm('N', 'N', u1 - u0, k, n, 1.0f, dy + r0 * n, n, we, k, 0.0f, dx + r0 * k, k);
    } else {            // dw[e][u0:u1] = dy[rows, u0:u1]^T @ x[rows]
      dnnl_sgemm('T', 'N', u1 - u0, k, m, 1.0f, dy + lo * n + u0, n, x + lo * k, k, 0.0f,
                 dw + s.expert * n * k + u0 * k, k);
    }
  });
  return 0;
}
