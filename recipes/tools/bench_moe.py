"""One MoE layer's expert paths vs a dense SwiGLU MLP of the same active FLOPs (CPU, GRAPH mode).

    python -m recipes.tools.bench_moe                       # Pro bench shape, batched vs grouped vs dense
    python -m recipes.tools.bench_moe --impls grouped batched loop --rounds 9 --tokens 2048
    python -m recipes.tools.bench_moe --arch pangu_ultra_moe --impls grouped dense   # the Ultra layer
    python -m recipes.tools.bench_moe --impls grouped grouped-compose dense   # permutation kernels A/B

The layer is the Pro MoE bench preset's (H 512, E 16 experts, K 4, I 256, shared expert 512, MoGE
router), built like the model builds it (--arch pangu_ultra_moe: the Ultra bench preset's UltraMoE,
sigmoid top-k router with selection bias, 1 shared expert of I, built by pangu/ultra_moe/model.py); dense = SwiGLUMLP(H, K*I + shared), the "MoE vs dense"
reference of `python -m recipes.tools.bench`. Each variant is `ms.jit(ms.value_and_grad(loss, params))`
with loss = mean(y^2) (+ balance for the MoE), forward + backward on the same [tokens, H] input.
"<impl>-compose" is expert_impl <impl> compiled with `ops.moe.use_kernels(False)` (the sort/gather
composition instead of the CPU permutation kernels). Variants run interleaved (round-robin) so load from other processes hits all alike; the median
over rounds is reported with the load average at the start and the end.
"""
import argparse
import os
import statistics
import time

import numpy as np


def _sync(out):
    while isinstance(out, (tuple, list)):
        out = out[0]
    out.asnumpy()


def shared_width(cfg):
    """Shared-expert intermediate size of a Pro or Ultra config."""
    if hasattr(cfg, "shared_expert_intermediate_size"):
        return cfg.shared_expert_intermediate_size
    return cfg.num_shared_experts * cfg.moe_intermediate_size


def build(cfg, impl):
    """A MoE layer (expert_impl=impl) or the equal-FLOP dense MLP (impl="dense"), init N(0, 0.02)."""
    import dataclasses

    from ops import impl_scope
    from pangu.common.init import init_normal
    from pangu.common.layers import dtype_of
    from pangu.common.mlp import SwiGLUMLP
    from pangu.common.moe import MoE, MoGERouter

    h, k, i = cfg.hidden_size, cfg.num_experts_per_tok, cfg.moe_intermediate_size
    with impl_scope(cfg.ops_impl):
        if impl == "dense":
            return init_normal(SwiGLUMLP(h, k * i + shared_width(cfg)), 0.02, 0)
        if not hasattr(cfg, "num_groups"):                       # Ultra: the model's own layer
            from pangu.ultra_moe.model import UltraMoE
            return init_normal(UltraMoE(dataclasses.replace(cfg, expert_impl=impl)), 0.02, 0)
        router = MoGERouter(h, cfg.num_experts, cfg.num_groups)
        moe = MoE(h, i, cfg.num_experts, k, router, cfg.shared_expert_intermediate_size, impl,
                  dtype_of(cfg.compute_dtype), imbalance_devices=cfg.num_groups)
    return init_normal(moe, 0.02, 0)


def step_fn(cell, impl):
    import mindspore as ms

    if impl == "dense":
        def loss(x):
            y = cell(x)
            return (y * y).mean()
    else:
        def loss(x):
            y, balance, _ = cell(x)
            return (y * y).mean() + balance
    return ms.jit(ms.value_and_grad(loss, None, cell.trainable_params()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", nargs="+", default=["batched", "grouped", "dense"],
                        help="expert_impl values (+ '-compose': without the permutation kernels) and/or 'dense'")
    parser.add_argument("--tokens", type=int, default=2048, help="T (bench preset: 4 x 512)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--arch", default="pangu_pro_moe", choices=["pangu_pro_moe", "pangu_ultra_moe"])
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="config overrides, e.g. num_experts=32 (ints only)")
    args = parser.parse_args(argv)

    import mindspore as ms
    from mindspore import Tensor
    import models

    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = models.get_spec(args.arch).config(args.preset,
                              **{kv.split("=")[0]: int(kv.split("=")[1]) for kv in args.set})
    x = Tensor(np.random.default_rng(0).standard_normal((args.tokens, cfg.hidden_size), np.float32))
    fns = {}
    import ops.moe as moe_ops

    for impl in args.impls:
        base_impl = impl.removesuffix("-compose")
        fns[impl] = step_fn(build(cfg, base_impl), base_impl)
        t = time.perf_counter()
        moe_ops.use_kernels(not impl.endswith("-compose"))       # read when the graph compiles
        _sync(fns[impl](x))                                       # compile
        moe_ops.use_kernels(True)
        print(f"{impl}: compiled in {time.perf_counter() - t:.1f}s", flush=True)
        for _ in range(2):
            _sync(fns[impl](x))                                   # warm up
    load0 = os.getloadavg()
    times = {impl: [] for impl in fns}
    for _ in range(args.rounds):
        for impl, fn in fns.items():
            t = time.perf_counter()
            _sync(fn(x))
            times[impl].append(time.perf_counter() - t)
    load1 = os.getloadavg()
    n_exp = getattr(cfg, "num_experts", None) or cfg.num_routed_experts
    print(f"T={args.tokens} H={cfg.hidden_size} E={n_exp} K={cfg.num_experts_per_tok} "
          f"I={cfg.moe_intermediate_size} shared={shared_width(cfg)}, "
          f"fwd+bwd, median of {args.rounds} interleaved rounds; load average "
          f"{load0[0]:.2f} -> {load1[0]:.2f}")
    base = statistics.median(times["dense"]) if "dense" in times else None
    for impl, ts in times.items():
        med = statistics.median(ts)
        vs = f"  {med / base:5.2f}x dense" if base else ""
        print(f"  {impl:8} median {med * 1e3:8.1f} ms  (min {min(ts) * 1e3:7.1f}, max "
              f"{max(ts) * 1e3:7.1f}){vs}")
    return times


if __name__ == "__main__":
    main()
