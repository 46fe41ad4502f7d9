"""MoE routing + dropless token permutation.

Public API:
  moge_route(logits_TE, num_groups, scale_1E=None, impl="auto")
  topk_route(logits_TE, top_k, score_func="softmax", bias_E=None, norm_topk_prob=False,
             scaling_factor=1.0, impl="auto")
  permute_plan / permute / unpermute  (expert-blocked dropless layout, see reference.py)
  balance_loss, imbalance_score (+ imbalance_score_np), expert_counts, default_block

All impls currently resolve to the reference compositions: on Ascend the fused
MoeGatingGroupTopK is NOT MoGE (it is plain top-k of all experts, see MODELS.md), and
moe_token_permute / grouped_matmul would be wired behind impl="ascend" by the Ascend owner.
"""
from ops._dispatch import check_impl
from ops.moe import reference as _ref
from ops.moe.reference import (balance_loss, default_block, expert_counts, imbalance_score,
                               imbalance_score_np, permute, permute_plan, unpermute)

__all__ = ["moge_route", "topk_route", "permute_plan", "permute", "unpermute", "balance_loss",
           "imbalance_score", "imbalance_score_np", "expert_counts", "default_block"]


def moge_route(logits_TE, num_groups, scale_1E=None, impl="auto"):
    """MoGE routing (one expert per contiguous group). See reference.moge_route."""
    check_impl(impl, "moe.moge_route")
    return _ref.moge_route(logits_TE, num_groups, scale_1E)


def topk_route(logits_TE, top_k, score_func="softmax", bias_E=None, norm_topk_prob=False,
               scaling_factor=1.0, impl="auto"):
    """Plain top-k routing with optional selection bias. See reference.topk_route."""
    check_impl(impl, "moe.topk_route")
    return _ref.topk_route(logits_TE, top_k, score_func, bias_E, norm_topk_prob, scaling_factor)
