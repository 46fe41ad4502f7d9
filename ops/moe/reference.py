"""MoE routing and token permutation, plain MindSpore ops (CPU and Ascend).

Legend: T tokens, H hidden, E experts, K experts per token, G groups, M experts per group (E/G),
A = T*K assignments (token, choice), P padded assignment slots, NB = P / blk expert blocks,
D devices.

Routing (all fp32):
  moge_route   : softmax over all E -> G contiguous groups -> argmax per group (ties: lowest
                 index) -> weight = p[e] * scale[e]. No renormalisation (Pangu Pro MoE).
  topk_route   : softmax|sigmoid scores, optional selection-only bias, top-k, optional
                 renormalisation, scaling factor (DeepSeek-V3 / Pangu Ultra MoE style).
Permutation (dropless, static shapes):
  Each expert's assignments are packed contiguously and padded up to a multiple of `blk` rows,
  so the buffer is cut into NB blocks that each belong to ONE expert. A block-batched matmul with
  per-block gathered expert weights then computes every assignment exactly once plus at most
  E*(blk-1) padding rows — a CPU/graph-mode stand-in for grouped_matmul. Worst-case sizes are
  static: P = NB*blk with NB = ceil(A/blk) + E.
"""
import numpy as np
import mindspore as ms
from mindspore import ops, Tensor


# ----------------------------------------------------------------------------- routing
def moge_route(logits_TE, num_groups, scale_1E=None):
    """MoGE group routing. Returns (weights_TG fp32, experts_TG int32, probs_TE fp32)."""
    t, e = logits_TE.shape
    m = e // num_groups
    probs_TE = ops.softmax(logits_TE.astype(ms.float32), -1)
    probs_TGM = probs_TE.reshape(t, num_groups, m)
    best_TG1 = probs_TGM.max(axis=-1, keepdims=True)
    # argmax with numpy's tie rule: the lowest index among the maxima.
    idx_M = Tensor(np.arange(m, dtype=np.int32))
    cand_TGM = ops.where(probs_TGM == best_TG1, idx_M, ops.full_like(idx_M, m))
    local_TG = cand_TGM.min(axis=-1)
    experts_TG = local_TG + Tensor(np.arange(num_groups, dtype=np.int32) * m)
    weights_TG = best_TG1.squeeze(-1)
    if scale_1E is not None:
        weights_TG = weights_TG * ops.gather(scale_1E.reshape(-1).astype(ms.float32), experts_TG, 0)
    return weights_TG, experts_TG.astype(ms.int32), probs_TE


def router_scores(logits_TE, score_func):
    """(scores_TE, probs_TE) in fp32: softmax scores, or sigmoid scores with probs normalised to sum 1."""
    logits32 = logits_TE.astype(ms.float32)
    if score_func == "softmax":
        scores_TE = ops.softmax(logits32, -1)
        return scores_TE, scores_TE
    if score_func == "sigmoid":
        scores_TE = ops.sigmoid(logits32)
        return scores_TE, scores_TE / scores_TE.sum(-1, keepdims=True)
    raise ValueError(f"score_func: unknown {score_func!r}; use 'softmax' or 'sigmoid'")


def group_limited(select_TE, n_group, topk_group):
    """DeepSeek-V3's group-limited selection (topk_method "noaux_tc"): the E experts form n_group
    contiguous groups; a group scores the sum of its two best selection scores; only the experts of the
    topk_group best groups stay selectable (the others get -inf). n_group == 1: unchanged."""
    if n_group == 1 or topk_group >= n_group:
        return select_TE
    t, e = select_TE.shape
    grouped_TGm = select_TE.reshape(t, n_group, e // n_group)
    group_TG = ops.topk(grouped_TGm, 2)[0].sum(-1)
    _, best_TK = ops.topk(group_TG, topk_group)
    one, zero = Tensor(1.0, ms.float32), Tensor(0.0, ms.float32)
    keep_TG = ops.one_hot(best_TK.astype(ms.int32), n_group, one, zero).sum(1)
    keep_TE = ops.broadcast_to(keep_TG[:, :, None], grouped_TGm.shape).reshape(t, e)
    return ops.where(keep_TE > 0, select_TE, ops.full_like(select_TE, -float("inf")))


def topk_route(logits_TE, top_k, score_func="softmax", bias_E=None, norm_topk_prob=False,
               scaling_factor=1.0, n_group=1, topk_group=1):
    """Top-k routing. `bias_E` shifts the SELECTION only; weights come from the raw scores;
    `n_group` / `topk_group` limit the selection to the best groups (`group_limited`).

    Returns (weights_TK fp32, experts_TK int32, probs_TE fp32) where probs_TE are the scores the
    balance loss uses (softmax scores, or sigmoid scores normalised to sum 1 per token).
    """
    scores_TE, probs_TE = router_scores(logits_TE, score_func)
    select_TE = scores_TE if bias_E is None else scores_TE + bias_E.astype(ms.float32)
    _, experts_TK = ops.topk(group_limited(select_TE, n_group, topk_group), top_k)
    experts_TK = experts_TK.astype(ms.int32)
    weights_TK = ops.gather_elements(scores_TE, 1, experts_TK)
    if norm_topk_prob:
        weights_TK = weights_TK / (weights_TK.sum(-1, keepdims=True) + 1e-20)
    if scaling_factor != 1.0:
        weights_TK = weights_TK * scaling_factor
    return weights_TK, experts_TK, probs_TE


# ----------------------------------------------------------------------------- statistics
def expert_counts(experts_TK, num_experts):
    """Number of assignments per expert, fp32 [E]."""
    flat_A = experts_TK.reshape(-1)
    one = Tensor(1.0, ms.float32)
    zero = Tensor(0.0, ms.float32)
    return ops.one_hot(flat_A, num_experts, one, zero).sum(0)


def balance_loss(probs_TE, experts_TK, num_experts, top_k):
    """alpha-free sum_i f_i * p_i with f_i = E/(K*T) * count_i and p_i = mean_t probs[t, i]."""
    t = probs_TE.shape[0]
    f_E = expert_counts(experts_TK, num_experts) * (num_experts / (top_k * t))
    p_E = probs_TE.astype(ms.float32).mean(0)
    return (ops.stop_gradient(f_E) * p_E).sum()


def imbalance_score(experts_TK, num_experts, num_devices):
    """(max_i T_i - min_i T_i) / T: T_i = assignments landing on device i, with experts placed
    contiguously (E/D experts per device). 0 for MoGE when D = number of groups."""
    t = experts_TK.shape[0]
    per_dev = num_experts // num_devices
    dev_TK = ops.floor_divide(experts_TK, per_dev).astype(ms.int32)
    load_D = expert_counts(dev_TK, num_devices)
    return (load_D.max() - load_D.min()) / t


def imbalance_score_np(experts_TK, num_experts, num_devices):
    """Numpy twin of `imbalance_score` for analysis scripts and tests."""
    experts_TK = np.asarray(experts_TK)
    dev = experts_TK.reshape(-1) // (num_experts // num_devices)
    load = np.bincount(dev, minlength=num_devices)
    return float(load.max() - load.min()) / experts_TK.shape[0]


# ----------------------------------------------------------------------------- permutation
def default_block(num_assign, num_experts):
    """Block rows per expert segment: ~ the mean load per expert, a multiple of 8 (>= 8).
    Bounds the padding to <= A + E*blk ~ 2A rows and the gathered weights to ~2E copies."""
    # integer-only so it also evaluates while a GRAPH-mode construct is being compiled
    blk = -(-num_assign // (8 * num_experts)) * 8
    return max(8, blk)


def permute_plan(experts_TK, num_experts, block):
    """Where each assignment goes in the padded, expert-blocked buffer (no gradients).

    Returns (dest_A int32 slot of each assignment, slot_src_P int32 1+token for each slot or 0
    for padding, block_expert_NB int32 expert owning each block)."""
    t, k = experts_TK.shape
    a = t * k
    nb = -(-a // block) + num_experts
    p = nb * block
    flat_A = experts_TK.reshape(-1).astype(ms.int32)
    onehot_AE = ops.one_hot(flat_A, num_experts, Tensor(1, ms.int32), Tensor(0, ms.int32))
    count_E = onehot_AE.sum(0)
    # rank of each assignment among those of the same expert (inclusive cumsum - 1)
    rank_A = (ops.cumsum(onehot_AE, 0) * onehot_AE).sum(1) - 1
    padded_E = ops.floor_divide(count_E + (block - 1), block) * block
    end_E = ops.cumsum(padded_E, 0)
    start_E = end_E - padded_E
    dest_A = ops.gather(start_E, flat_A, 0) + rank_A
    token_A = Tensor(np.repeat(np.arange(1, t + 1, dtype=np.int32), k))
    slot_src_P = ops.scatter_nd(dest_A[:, None], token_A, (p,))
    block_start_NB = Tensor(np.arange(nb, dtype=np.int32) * block)
    owner_NB = (end_E[None, :] <= block_start_NB[:, None]).astype(ms.int32).sum(1)
    block_expert_NB = ops.minimum(owner_NB, num_experts - 1)
    return (ops.stop_gradient(dest_A), ops.stop_gradient(slot_src_P),
            ops.stop_gradient(block_expert_NB))


def permute(x_TH, slot_src_P):
    """Gather tokens into the padded expert-blocked buffer [P, H] (padding rows are zeros)."""
    zero_1H = ops.zeros((1, x_TH.shape[1]), x_TH.dtype)
    return ops.gather(ops.concat((zero_1H, x_TH), 0), slot_src_P, 0)


def unpermute(out_PH, dest_A, weights_TK):
    """Combine: y[t] = sum_k weights[t, k] * out[dest[t, k]] (fp32 weights, output in out's dtype)."""
    t, k = weights_TK.shape
    out_AH = ops.gather(out_PH, dest_A, 0)
    out_TKH = out_AH.reshape(t, k, -1).astype(ms.float32)
    y_TH = (out_TKH * weights_TK[:, :, None]).sum(1)
    return y_TH.astype(out_PH.dtype)


# ----------------------------------------------------------------------------- dense permutation
def _ranks(flat_A, num_experts):
    """(count_E, dest_A): assignment a goes to row start[e_a] + (rank of a among expert e_a)."""
    onehot_AE = ops.one_hot(flat_A, num_experts, Tensor(1, ms.int32), Tensor(0, ms.int32))
    count_E = onehot_AE.sum(0)
    rank_A = (ops.cumsum(onehot_AE, 0) * onehot_AE).sum(1) - 1
    start_E = ops.cumsum(count_E, 0) - count_E
    return count_E, ops.gather(start_E, flat_A, 0) + rank_A


def sort_permute(x_TH, experts_TK, num_experts):
    """Unpadded expert-major permutation (the layout of Ascend's moe_token_permute +
    grouped_matmul): returns (x_AH [A, H] rows grouped by expert, token order kept inside an
    expert; order_A int32 = flat assignment index t*K + k of each row ("sorted_indices");
    counts_E int32 rows per expert). Reference = an explicit [A, A] one-hot permutation matmul."""
    t, k = experts_TK.shape
    a = t * k
    flat_A = experts_TK.reshape(-1).astype(ms.int32)
    count_E, dest_A = _ranks(flat_A, num_experts)
    one = Tensor(1.0, ms.float32)
    zero = Tensor(0.0, ms.float32)
    perm_AA = ops.one_hot(dest_A, a, one, zero)                 # perm[a, r] = 1 iff a goes to row r
    x_AH = ops.broadcast_to(x_TH[:, None], (t, k, x_TH.shape[1])).reshape(a, -1)
    x_rows = ops.matmul(perm_AA.T, x_AH.astype(ms.float32)).astype(x_TH.dtype)
    order_A = ops.matmul(perm_AA.T, Tensor(np.arange(a, dtype=np.float32))[:, None])
    return x_rows, ops.stop_gradient(order_A.reshape(-1).astype(ms.int32)), ops.stop_gradient(count_E)


def sort_unpermute(x_AH, order_A, weights_TK):
    """Inverse of sort_permute plus the weighted combine: y[t] = sum_k w[t, k] * x[row of (t, k)].
    Reference = the transposed one-hot permutation matmul. Output in x's dtype."""
    t, k = weights_TK.shape
    a = t * k
    one = Tensor(1.0, ms.float32)
    zero = Tensor(0.0, ms.float32)
    perm_AA = ops.one_hot(order_A, a, one, zero)                # perm[r, a] = 1 iff row r is a
    back_AH = ops.matmul(perm_AA.T, x_AH.astype(ms.float32))
    y_TH = (back_AH.reshape(t, k, -1) * weights_TK.astype(ms.float32)[:, :, None]).sum(1)
    return y_TH.astype(x_AH.dtype)
