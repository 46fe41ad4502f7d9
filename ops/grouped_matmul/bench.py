"""Grouped-matmul kernel speed: GFLOP/s of the fast path per thread count vs one dense MatMul.

    python -m ops.grouped_matmul.bench                     # Pro bench gate projection, 1 and 2 threads
    python -m ops.grouped_matmul.bench --rows 8192 --k 256 --n 512 --threads 1 2 --skew 0.5

Shape: A rows (T*K assignments) sorted over E experts, x [A, K] @ w[e]^T, w [E, N, K]. Counts are
equal, or with --skew s drawn from a Dirichlet(1/s) (uneven routing). Timed in GRAPH mode (ms.jit):
forward, and forward+backward (dx, dw); the dense row is `ops.matmul` of [A, K] x [K, N] (same FLOPs
as the grouped forward; its backward computes dx and dw too). PANGU_GMM_THREADS is set between calls
(the kernel reads it at every call); variants interleave, the median of --reps calls is reported.
"""
import argparse
import os
import statistics
import time

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192, help="A = T*K (bench: 2048 tokens x 4)")
    parser.add_argument("--k", type=int, default=512, help="in features (bench: hidden 512)")
    parser.add_argument("--n", type=int, default=256, help="out features (bench: expert width 256)")
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skew", type=float, default=0.0, help="0 = equal counts")
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args(argv)

    import mindspore as ms
    from mindspore import Tensor, ops

    import ops.grouped_matmul as gm

    if gm.resolve_impl("fast") != "fast":
        raise SystemExit("grouped_matmul: the fast kernel is unavailable (see the warning above)")
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(0)
    a, k, n, e = args.rows, args.k, args.n, args.experts
    p = rng.dirichlet(np.full(e, 1 / args.skew)) if args.skew > 0 else np.full(e, 1 / e)
    counts = np.floor(p * a).astype(np.int32)
    counts[-1] += a - counts.sum()
    x = Tensor(rng.standard_normal((a, k), np.float32))
    w = Tensor(rng.standard_normal((e, n, k), np.float32))
    w2 = Tensor(rng.standard_normal((k, n), np.float32))
    c = Tensor(counts)

    def gmm_fwd(x_, w_):
        return gm.grouped_matmul(x_, w_, c, "fast")

    def gmm_loss(x_, w_):
        return gm.grouped_matmul(x_, w_, c, "fast").sum()

    def mm_fwd(x_, w_):
        return ops.matmul(x_, w_)

    def mm_loss(x_, w_):
        return ops.matmul(x_, w_).sum()

    grad = (0, 1)
    cases = {"grouped fwd": (ms.jit(gmm_fwd), (x, w)),
             "grouped fwd+bwd": (ms.jit(ms.value_and_grad(gmm_loss, grad)), (x, w)),
             "dense fwd": (ms.jit(mm_fwd), (x, w2)),
             "dense fwd+bwd": (ms.jit(ms.value_and_grad(mm_loss, grad)), (x, w2))}

    def call(fn, a_):
        out = fn(*a_)
        while isinstance(out, (tuple, list)):
            out = out[0]
        out.asnumpy()

    variants = [(name, t) for name in cases for t in (args.threads if "grouped" in name else [None])]
    times = {v: [] for v in variants}
    for rep in range(args.reps + 2):                    # 2 warm-up rounds (compile)
        for name, t in variants:
            if t is not None:
                os.environ["PANGU_GMM_THREADS"] = str(t)
            fn, a_ = cases[name]
            t0 = time.perf_counter()
            call(fn, a_)
            if rep >= 2:
                times[(name, t)].append(time.perf_counter() - t0)
    os.environ.pop("PANGU_GMM_THREADS", None)
    flops = 2.0 * a * k * n
    print(f"A={a} K={k} N={n} E={e} counts min/max {counts.min()}/{counts.max()}; median of "
          f"{args.reps}; load average {os.getloadavg()[0]:.2f}")
    for (name, t), ts in times.items():
        med = statistics.median(ts)
        f = flops * (3 if "bwd" in name else 1)
        label = f"{name} ({t} thread{'s' if t != 1 else ''})" if t else f"{name} (ops.matmul)"
        print(f"  {label:34} {med * 1e3:8.2f} ms  {f / med / 1e9:7.1f} GFLOP/s")


if __name__ == "__main__":
    main()
