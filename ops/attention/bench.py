"""Benchmark FastAttention (CPU custom op) against the reference (explicit S x S mask + softmax).

    python -m ops.attention.bench [--seqs 1024,2048,4096,8192,16384] [--head-dim 128] [--no-causal]

Batch 1, 1 head, causal by default, fp32, PyNative. Every (impl, fwd | fwd+bwd, S) case runs in a
fresh subprocess so that its peak-memory number is its own: peak RSS (ru_maxrss) minus the RSS just
before the first attention call (inputs already allocated). Times are the best of the timed repeats
after one warm-up call. Ratios compare fast vs reference measured in the same run. A reference case
that runs out of memory or time is reported as such instead of aborting the table.
"""
import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time

CASE_TIMEOUT_S = 900
TIME_BUDGET_S = 20.0  # per case: stop repeating once this much time has been spent timing


def _reference_fn():
    try:
        from ops.attention.reference import attention
    except ImportError:  # fallback so the bench runs before reference.py exists
        import numpy as np
        import mindspore as ms
        from mindspore import ops

        def attention(q, k, v, segment_ids, causal, scale):
            s = q.shape[2]
            scores = ops.matmul(q, k.swapaxes(-1, -2)) * scale
            mask = ms.Tensor(np.tril(np.ones((s, s), np.bool_)))[None, None] if causal else None
            if mask is not None:
                scores = ops.where(mask, scores, ops.full_like(scores, -1e30))
            return ops.matmul(ops.softmax(scores, -1), v)
    return attention


def run_case(impl: str, mode: str, seq: int, head_dim: int, causal: bool, reps: int) -> dict:
    """Runs inside the child process; returns {"time_s", "peak_mib"}."""
    import numpy as np
    import psutil
    import mindspore as ms

    if impl == "fast":
        from ops.attention.fast_cpu import fast_attention as attn
    else:
        attn = _reference_fn()
    rng = np.random.default_rng(0)
    shape = (1, 1, seq, head_dim)
    q, k, v, do = (ms.Tensor(rng.standard_normal(shape).astype(np.float32)) for _ in range(4))
    scale = head_dim ** -0.5

    if mode == "fwd":
        def step():
            return attn(q, k, v, None, causal, scale).asnumpy()
    else:
        def loss(q_, k_, v_):
            return (attn(q_, k_, v_, None, causal, scale) * do).sum()
        grad_fn = ms.grad(loss, grad_position=(0, 1, 2))

        def step():
            return [g.asnumpy() for g in grad_fn(q, k, v)]

    rss0 = psutil.Process().memory_info().rss
    step()  # warm-up (kernel init / first allocation)
    times = []
    start = time.perf_counter()
    while len(times) < reps and (not times or time.perf_counter() - start < TIME_BUDGET_S):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"time_s": min(times), "peak_mib": max(peak - rss0, 0) / 2 ** 20}


def _spawn(impl, mode, seq, args) -> dict:
    cmd = [sys.executable, "-m", "ops.attention.bench", "--case", f"{impl},{mode},{seq}",
           "--head-dim", str(args.head_dim), "--reps", str(args.reps)]
    if args.no_causal:
        cmd.append("--no-causal")
    env = dict(os.environ, GLOG_v="3")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CASE_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout>{CASE_TIMEOUT_S}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    if proc.returncode < 0 or "MemoryError" in proc.stderr or "alloc" in proc.stderr.lower():
        return {"error": f"OOM/killed (rc={proc.returncode})"}
    tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:80]
    return {"error": f"failed rc={proc.returncode}: {tail}"}


def _fmt_t(r):
    return f"{r['time_s'] * 1e3:.0f}" if "time_s" in r else r["error"]


def _fmt_m(r):
    return f"{r['peak_mib']:.0f}" if "peak_mib" in r else "-"


def _ratio(num, den, key):
    if key in num and key in den and num[key] > 0:
        return f"{den[key] / num[key]:.2f}x"
    return "-"


def _mem_frac(fast, ref):
    if "peak_mib" in fast and "peak_mib" in ref and ref["peak_mib"] > 0:
        return f"{100 * fast['peak_mib'] / ref['peak_mib']:.1f}%"
    return "-"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", default="1024,2048,4096,8192,16384")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-causal", action="store_true")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: impl,mode,seq (child process)
    args = parser.parse_args(argv)

    if args.case:
        impl, mode, seq = args.case.split(",")
        print(json.dumps(run_case(impl, mode, int(seq), args.head_dim, not args.no_causal, args.reps)))
        return 0

    from ops.attention import build
    build.ensure_built()
    import psutil

    seqs = [int(s) for s in args.seqs.split(",")]
    load = os.getloadavg()
    print(f"# FastAttention vs reference, {datetime.date.today()}, B=1 N=1 D={args.head_dim} "
          f"{'non-causal' if args.no_causal else 'causal'} fp32, {os.cpu_count()} cores, "
          f"load avg {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}")
    print("| S | fwd fast ms | fwd ref ms | fwd speedup | f+b fast ms | f+b ref ms | f+b speedup "
          "| fwd mem fast/ref MiB | f+b mem fast/ref MiB | f+b mem fast/ref |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for seq in seqs:
        res = {}
        for impl in ("fast", "reference"):
            for mode in ("fwd", "fwdbwd"):
                # Measured: the reference peaks at ~9 (fwd) / ~15 (fwd+bwd) fp32 S x S matrices. The
                # machine is shared, so don't start a case that would take most of the free memory.
                need = (9 if mode == "fwd" else 15) * 4 * seq * seq
                avail = psutil.virtual_memory().available
                if impl == "reference" and need > 0.6 * avail:
                    res[impl, mode] = {"error": f"skipped: needs ~{need / 2**30:.0f} GiB, "
                                                f"{avail / 2**30:.0f} GiB free"}
                    continue
                res[impl, mode] = _spawn(impl, mode, seq, args)
        f, r, fb, rb = res["fast", "fwd"], res["reference", "fwd"], res["fast", "fwdbwd"], res["reference", "fwdbwd"]
        print(f"| {seq} | {_fmt_t(f)} | {_fmt_t(r)} | {_ratio(f, r, 'time_s')} | {_fmt_t(fb)} | {_fmt_t(rb)} "
              f"| {_ratio(fb, rb, 'time_s')} | {_fmt_m(f)} / {_fmt_m(r)} | {_fmt_m(fb)} / {_fmt_m(rb)} "
              f"| {_mem_frac(fb, rb)} |", flush=True)
    load = os.getloadavg()
    print(f"# load avg at end {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
