"""MoE routing + dropless token permutation.

Public API (each op has `impl=` "auto" | "reference" | "fast" | "ascend"):
  moge_route(logits_TE, num_groups, scale_1E=None, impl)
  topk_route(logits_TE, top_k, score_func="softmax", bias_E=None, norm_topk_prob=False,
             scaling_factor=1.0, impl, n_group=1, topk_group=1)   (DeepSeek-V3 group-limited selection)
  permute_plan(experts_TK, num_experts, block, impl)   expert-blocked padded layout (CPU/graph
                                                       stand-in for grouped_matmul, see reference.py)
  expert_counts(experts_TK, num_experts, impl)
  sort_permute(x_TH, experts_TK, num_experts, impl) / sort_unpermute(x_AH, order_A, weights_TK, impl)
                                                       unpadded expert-major layout + counts (the
                                                       layout of Ascend's moe_token_permute)
Shared, no variants (already single gathers): permute, unpermute, balance_loss, imbalance_score
(+ imbalance_score_np), default_block.

impl:
  "reference": reference.py (readable compositions; one-hot ranks / permutation matmuls).
  "fast":      fast.py (ArgMaxWithValue MoGE, gather-free top-k, sort + searchsorted permutation);
               sort_permute / sort_unpermute: CPU aot kernels (fast_cpu.py, csrc/moe_permute.cc:
               counting sort, row gathers, gather-only backward), loaded lazily; the fast.py
               composition when they cannot be built (or after `use_kernels(False)`, for A/B runs).
  "ascend":    sort_permute / sort_unpermute -> ops.moe_token_permute / moe_token_unpermute; the
               routing ops have no Ascend fused equivalent (MoeGatingGroupTopK is NOT MoGE, see
               MODELS.md) and use the fast composition, which runs on Ascend too.
  "auto":      the `ops._dispatch.impl_scope` default if set, else "ascend" on Ascend, else "fast"
               for the ops in AUTO_FAST (measured faster on CPU, docs/ops.md), else "reference".
GRAPH mode: resolve once at build time (`resolve_impl(op, impl)`) and pass the concrete name (for
sort_permute / sort_unpermute resolving "fast" also builds/loads the kernels).
"""
import mindspore as ms
from mindspore import ops

from ops._dispatch import FastPath, effective, on_ascend
from ops.moe import fast as _fast
from ops.moe import reference as _ref
from ops.moe.reference import (balance_loss, default_block, imbalance_score, imbalance_score_np,
                               permute, unpermute)

__all__ = ["moge_route", "topk_route", "permute_plan", "permute", "unpermute", "expert_counts",
           "sort_permute", "sort_unpermute", "balance_loss", "imbalance_score",
           "imbalance_score_np", "default_block", "resolve_impl", "OPS", "kernels_available",
           "use_kernels"]

OPS = ("moge_route", "topk_route", "permute_plan", "expert_counts", "sort_permute",
       "sort_unpermute")
# Ops whose CPU fast path measured faster than the reference (python -m ops.bench_ops).
# permute_plan / expert_counts: one-hot + cumsum over E <= 64 columns beats a CPU sort at these sizes;
# moge_route: within measurement noise (0.35x tiny, 1.2x bench), so the reference stays the default.
AUTO_FAST = {"moge_route": False, "topk_route": True, "permute_plan": False,
             "expert_counts": False, "sort_permute": True, "sort_unpermute": True}


KERNELS = FastPath("moe", "ops.moe.fast_cpu", ("sort_permute", "sort_unpermute"))
kernels_available = KERNELS.available  # build/load the permutation kernels on first use; True when usable


def use_kernels(on: bool) -> None:
    """Switch the "fast" sort_permute / sort_unpermute between the aot kernels (True, default) and
    the fast.py composition (False). GRAPH mode reads the switch when a graph COMPILES (first call),
    so set it before a jitted function's first call (benchmarks: A/B in one process)."""
    KERNELS.set_enabled(on)


def resolve_impl(op: str, impl: str = "auto") -> str:
    """Concrete implementation of MoE op `op` for this device: "reference" | "fast" | "ascend"."""
    if op not in OPS:
        raise ValueError(f"op: unknown MoE op {op!r}; use one of {OPS}")
    impl = effective(impl, f"moe.{op}")
    if impl == "auto":
        if on_ascend():
            impl = "ascend"
        else:
            impl = "fast" if AUTO_FAST[op] else "reference"
    if impl == "ascend" and op not in ("sort_permute", "sort_unpermute"):
        return "fast"                                    # no fused Ascend op: the composition
    if impl == "fast" and op in ("sort_permute", "sort_unpermute"):
        kernels_available()                              # build/load outside any graph
    return impl


def moge_route(logits_TE, num_groups, scale_1E=None, impl="auto"):
    """MoGE routing (one expert per contiguous group) -> (weights_TG, experts_TG, probs_TE)."""
    if impl not in ("reference", "fast"):
        impl = resolve_impl("moge_route", impl)
    if impl == "fast":
        return _fast.moge_route(logits_TE, num_groups, scale_1E)
    return _ref.moge_route(logits_TE, num_groups, scale_1E)


def topk_route(logits_TE, top_k, score_func="softmax", bias_E=None, norm_topk_prob=False,
               scaling_factor=1.0, impl="auto", n_group=1, topk_group=1):
    """Top-k routing with optional selection-only bias and group limit -> (weights, experts, probs)."""
    if impl not in ("reference", "fast"):
        impl = resolve_impl("topk_route", impl)
    if impl == "fast":
        return _fast.topk_route(logits_TE, top_k, score_func, bias_E, norm_topk_prob, scaling_factor, n_group,
                                topk_group)
    return _ref.topk_route(logits_TE, top_k, score_func, bias_E, norm_topk_prob, scaling_factor, n_group,
                           topk_group)


def permute_plan(experts_TK, num_experts, block, impl="auto"):
    """(dest_A, slot_src_P, block_expert_NB) of the expert-blocked padded layout (reference.py)."""
    if impl not in ("reference", "fast"):
        impl = resolve_impl("permute_plan", impl)
    if impl == "fast":
        return _fast.permute_plan(experts_TK, num_experts, block)
    return _ref.permute_plan(experts_TK, num_experts, block)


def expert_counts(experts_TK, num_experts, impl="auto"):
    """Number of assignments per expert, fp32 [E]."""
    if impl not in ("reference", "fast"):
        impl = resolve_impl("expert_counts", impl)
    if impl == "fast":
        return _fast.expert_counts(experts_TK, num_experts)
    return _ref.expert_counts(experts_TK, num_experts)


def sort_permute(x_TH, experts_TK, num_experts, impl="auto"):
    """-> (x_AH rows grouped by expert, order_A int32 flat assignment of each row, counts_E int32)."""
    if impl not in ("reference", "fast", "ascend"):
        impl = resolve_impl("sort_permute", impl)
    if impl == "ascend":
        x_AH, order_A = ops.moe_token_permute(x_TH, experts_TK.astype(ms.int32))
        counts = _ref.expert_counts(experts_TK, num_experts).astype(ms.int32)
        return x_AH, order_A, counts
    if impl == "fast":
        if KERNELS.ready:
            return KERNELS.sort_permute(x_TH, experts_TK, num_experts)
        return _fast.sort_permute(x_TH, experts_TK, num_experts)
    return _ref.sort_permute(x_TH, experts_TK, num_experts)


def sort_unpermute(x_AH, order_A, weights_TK, impl="auto"):
    """y[t] = sum_k weights[t, k] * x_AH[row of assignment (t, k)] -> [T, H]."""
    if impl not in ("reference", "fast", "ascend"):
        impl = resolve_impl("sort_unpermute", impl)
    if impl == "ascend":
        return ops.moe_token_unpermute(x_AH, order_A, weights_TK.astype(x_AH.dtype))
    if impl == "fast":
        if KERNELS.ready:
            return KERNELS.sort_unpermute(x_AH, order_A, weights_TK)
        return _fast.sort_unpermute(x_AH, order_A, weights_TK)
    return _ref.sort_unpermute(x_AH, order_A, weights_TK)

