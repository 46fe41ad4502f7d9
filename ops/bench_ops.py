"""Time every op's CPU fast path against its reference (forward + backward, GRAPH mode via ms.jit).

    python -m ops.bench_ops                 # both sizes, prints a table of times and ratios
    python -m ops.bench_ops --sizes tiny --reps 20

"tiny" ~ the tiny presets' per-layer tensors (512 tokens, hidden 64); "bench" ~ the bench presets'
(2048 tokens, hidden 512). times are the minimum over --reps alternating calls;
ratio = reference time / fast time (> 1: the fast path is faster). The
numbers recorded in docs/ops.md come from this script; `auto` in each op's __init__.py picks the fast
path on CPU only where it measured faster. FastAttention has its own benchmark (ops.attention.bench).
"""
import argparse
import time

import numpy as np
import mindspore as ms
from mindspore import Tensor

SIZES = {  # T tokens, H hidden, rope [B, N, S, D], E experts, K per token
    "tiny": dict(T=512, H=64, rope=(8, 4, 64, 16), E=8, K=4),
    "bench": dict(T=2048, H=512, rope=(4, 8, 512, 64), E=16, K=4),
}


def _cases(sz, rng):
    """(name, make(impl) -> fwd+bwd callable, args) for every op at size `sz`."""
    import ops.moe as moe
    from ops.grouped_matmul import grouped_matmul
    from ops.rms_norm import rms_norm
    from ops.rope import apply_rope, rotary_tables
    from ops.swiglu import swiglu

    t, h, e, k = sz["T"], sz["H"], sz["E"], sz["K"]

    def f32(*shape):
        return Tensor(rng.normal(size=shape).astype(np.float32))

    b, n, s, d = sz["rope"]
    pos = Tensor(np.tile(np.arange(s, dtype=np.int32), (b, 1)))
    experts = Tensor(np.stack([rng.choice(e, k, replace=False) for _ in range(t)]).astype(np.int32))
    blk = moe.default_block(t * k, e)
    bias = f32(e)

    # Named functions with fixed arities: the graph compiler rejects *args and inline lambdas.
    def rms(impl):
        def loss(x, w):
            return rms_norm(x, w, 1e-5, impl).sum()
        return ms.value_and_grad(loss, grad_position=(0, 1))

    def act(impl):
        def loss(g, u):
            return swiglu(g, u, impl).sum()
        return ms.value_and_grad(loss, grad_position=(0, 1))

    def rope(layout):
        cos, sin = rotary_tables(pos, d, 1e4, layout)

        def make(impl):
            def loss(x):
                return apply_rope(x, cos, sin, layout, impl).sum()
            return ms.value_and_grad(loss)
        return make

    def moge(impl):
        def loss(lg):
            w, _, p = moe.moge_route(lg, k, None, impl)
            return w.sum() + (p * p).sum()
        return ms.value_and_grad(loss)

    def topk(score_func, with_bias):
        def make(impl):
            def loss(lg):
                w, _, p = moe.topk_route(lg, k, score_func, bias if with_bias else None,
                                         with_bias, 2.5 if with_bias else 1.0, impl)
                return w.sum() + (p * p).sum()
            return ms.value_and_grad(loss)
        return make

    def plan(impl):
        def run(ex):
            return moe.permute_plan(ex, e, blk, impl)
        return run

    def counts(impl):
        def run(ex):
            return moe.expert_counts(ex, e, impl)
        return run

    def gmm(impl):
        def loss(x, w):
            return grouped_matmul(x, w, counts_E, impl).sum()
        return ms.value_and_grad(loss, grad_position=(0, 1))

    counts_E = Tensor(np.bincount(experts.asnumpy().ravel(), minlength=e).astype(np.int32))

    def sort_perm(impl):
        def loss(x, w):
            x_ah, order, _ = moe.sort_permute(x, experts, e, impl)
            return moe.sort_unpermute(x_ah * 2.0, order, w, impl).sum()
        return ms.value_and_grad(loss, grad_position=(0, 1))

    return [
        ("rms_norm", rms, (f32(t, h), f32(h))),
        ("swiglu", act, (f32(t, 2 * h), f32(t, 2 * h))),
        ("rope rotate_half", rope("rotate_half"), (f32(b, n, s, d),)),
        ("rope interleaved", rope("interleaved"), (f32(b, n, s, d),)),
        ("moge_route", moge, (f32(t, e),)),
        ("topk_route softmax", topk("softmax", False), (f32(t, e),)),
        ("topk_route sigmoid+bias", topk("sigmoid", True), (f32(t, e),)),
        ("permute_plan", plan, (experts,)),
        ("expert_counts", counts, (experts,)),
    ] + ([("sort_permute+unpermute", sort_perm, (f32(t, h), f32(t, k))),
          ("grouped_matmul", gmm, (f32(t * k, h), f32(e, h // 2, h)))] if t * k <= 4096 else [])
    # (the sort_permute reference is an O(A^2) one-hot matmul and the grouped_matmul reference does
    # E times the FLOPs, both meant for tests: tiny size only; `python -m recipes.tools.bench_moe` times
    # the grouped expert path at the bench shape)


def _first(out):
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _time_pair(ref_fn, fast_fn, args, reps):
    """Min wall time (s) of each jitted callable; calls alternate so that load from other processes
    on a shared machine hits both alike, and the minimum discards the disturbed runs."""
    fns = [ms.jit(ref_fn), ms.jit(fast_fn)]
    for fn in fns:
        _first(fn(*args)).asnumpy()                          # compile + warm up
    best = [float("inf"), float("inf")]
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            _first(fn(*args)).asnumpy()                      # wait for the result
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--reps", type=int, default=40)
    args = parser.parse_args(argv)
    ms.set_context(mode=ms.GRAPH_MODE)
    import ops.grouped_matmul
    import ops.moe
    import ops.rms_norm
    import ops.rope
    import ops.swiglu
    for mod in (ops.rms_norm, ops.rope, ops.swiglu, ops.grouped_matmul):
        mod.resolve_impl("fast")      # build/load the kernels before tracing (graph mode cannot lazy-load)
    ops.moe.resolve_impl("sort_permute", "fast")                 # the MoE permutation kernels too
    rng = np.random.default_rng(0)
    print(f"{'size':6} {'op':26} {'reference ms':>12} {'fast ms':>9} {'ratio':>6}")
    for size in args.sizes:
        for name, make, a in _cases(SIZES[size], rng):
            ref, fast = _time_pair(make("reference"), make("fast"), a, args.reps)
            print(f"{size:6} {name:26} {ref * 1e3:12.3f} {fast * 1e3:9.3f} {ref / fast:6.2f}", flush=True)


if __name__ == "__main__":
    main()
