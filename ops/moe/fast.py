"""Faster CPU compositions of the MoE routing / permutation ops (same outputs as reference.py).

Legend as in reference.py: T tokens, E experts, K per token, G groups, M = E/G, A = T*K, P padded
slots, NB expert blocks.

  moge_route   : one ArgMaxWithValue per group ([T, G, M] -> value + first index of the maximum)
                 instead of max + equality mask + where + min (same tie rule: lowest index).
  topk_route   : without a selection bias the top-k VALUES are the weights (no gather).
  permute_plan : sort-based: one sort of the unique keys expert*A + a (so ties keep token order,
                 exactly the reference's placement), expert counts from one searchsorted on the
                 sorted experts, O(A log A) instead of the reference's O(A*E) one-hot + cumsum.
"""
import numpy as np
import mindspore as ms
from mindspore import ops, Tensor

from ops.moe import reference as _ref


def moge_route(logits_TE, num_groups, scale_1E=None):
    """MoGE group routing. Returns (weights_TG fp32, experts_TG int32, probs_TE fp32)."""
    t, e = logits_TE.shape
    m = e // num_groups
    probs_TE = ops.softmax(logits_TE.astype(ms.float32), -1)
    weights_TG, local_TG = ops.max(probs_TE.reshape(t, num_groups, m), axis=-1)
    experts_TG = local_TG.astype(ms.int32) + Tensor(np.arange(num_groups, dtype=np.int32) * m)
    if scale_1E is not None:
        weights_TG = weights_TG * ops.gather(scale_1E.reshape(-1).astype(ms.float32), experts_TG, 0)
    return weights_TG, experts_TG, probs_TE


def topk_route(logits_TE, top_k, score_func="softmax", bias_E=None, norm_topk_prob=False,
               scaling_factor=1.0, n_group=1, topk_group=1):
    """Top-k routing (see reference.topk_route); skips the gather when there is no bias and no group limit."""
    if bias_E is not None or (n_group > 1 and topk_group < n_group):
        return _ref.topk_route(logits_TE, top_k, score_func, bias_E, norm_topk_prob, scaling_factor, n_group,
                               topk_group)
    scores_TE, probs_TE = _ref.router_scores(logits_TE, score_func)
    weights_TK, experts_TK = ops.topk(scores_TE, top_k)
    if norm_topk_prob:
        weights_TK = weights_TK / (weights_TK.sum(-1, keepdims=True) + 1e-20)
    if scaling_factor != 1.0:
        weights_TK = weights_TK * scaling_factor
    return weights_TK, experts_TK.astype(ms.int32), probs_TE


def permute_plan(experts_TK, num_experts, block):
    """Sort-based twin of reference.permute_plan: identical (dest_A, slot_src_P, block_expert_NB)."""
    t, k = experts_TK.shape
    a = t * k
    nb = -(-a // block) + num_experts
    p = nb * block
    flat_A = experts_TK.reshape(-1).astype(ms.int32)
    arange_A = Tensor(np.arange(a, dtype=np.int32))
    _, order_A = ops.sort(flat_A * a + arange_A)            # unique keys: stable by construction
    order_A = order_A.astype(ms.int32)
    sorted_A = ops.gather(flat_A, order_A, 0)
    first_E = ops.searchsorted(sorted_A, Tensor(np.arange(num_experts + 1, dtype=np.int32)))
    first_E = first_E.astype(ms.int32)                      # [E+1], first_E[E] = A
    count_E = first_E[1:] - first_E[:-1]
    padded_E = ops.floor_divide(count_E + (block - 1), block) * block
    end_E = ops.cumsum(padded_E, 0)
    start_E = end_E - padded_E
    # sorted position i holds expert e = sorted[i] with rank i - first[e] among its assignments
    dest_sorted_A = ops.gather(start_E - first_E[:-1], sorted_A, 0) + arange_A
    dest_A = ops.scatter_nd(order_A[:, None], dest_sorted_A, (a,))
    token_sorted_A = ops.floor_divide(order_A, k) + 1
    slot_src_P = ops.scatter_nd(dest_sorted_A[:, None], token_sorted_A, (p,))
    block_start_NB = Tensor(np.arange(nb, dtype=np.int32) * block)
    owner_NB = ops.searchsorted(end_E, block_start_NB, right=True).astype(ms.int32)
    block_expert_NB = ops.minimum(owner_NB, num_experts - 1)
    return (ops.stop_gradient(dest_A), ops.stop_gradient(slot_src_P),
            ops.stop_gradient(block_expert_NB))


def expert_counts(experts_TK, num_experts):
    """Assignments per expert, fp32 [E], from a sort + searchsorted instead of a one-hot sum."""
    sorted_A, _ = ops.sort(experts_TK.reshape(-1).astype(ms.int32))
    first_E = ops.searchsorted(sorted_A, Tensor(np.arange(num_experts + 1, dtype=np.int32)))
    return (first_E[1:] - first_E[:-1]).astype(ms.float32)


def sort_permute(x_TH, experts_TK, num_experts):
    """Sort-based twin of reference.sort_permute: one sort + one gather, counts by searchsorted."""
    t, k = experts_TK.shape
    a = t * k
    flat_A = experts_TK.reshape(-1).astype(ms.int32)
    _, order_A = ops.sort(flat_A * a + Tensor(np.arange(a, dtype=np.int32)))
    order_A = ops.stop_gradient(order_A.astype(ms.int32))
    sorted_A = ops.gather(flat_A, order_A, 0)
    first_E = ops.searchsorted(sorted_A, Tensor(np.arange(num_experts + 1, dtype=np.int32)))
    count_E = (first_E[1:] - first_E[:-1]).astype(ms.int32)
    x_AH = ops.gather(x_TH, ops.floor_divide(order_A, k), 0)
    return x_AH, order_A, ops.stop_gradient(count_E)


def sort_unpermute(x_AH, order_A, weights_TK):
    """Scatter rows back to (token, choice) order with the inverse permutation, weighted sum."""
    t, k = weights_TK.shape
    a = t * k
    inv_A = ops.scatter_nd(order_A[:, None], Tensor(np.arange(a, dtype=np.int32)), (a,))
    back_TKH = ops.gather(x_AH, ops.stop_gradient(inv_A), 0).reshape(t, k, -1)
    y_TH = (back_TKH.astype(ms.float32) * weights_TK.astype(ms.float32)[:, :, None]).sum(1)
    return y_TH.astype(x_AH.dtype)
