"""Sigmoid top-k router (DeepSeek-V3 / Pangu Ultra MoE), scoped balance loss, aux-free bias rule.

Legend: T tokens, H hidden, E routed experts, K experts per token.

Router (plugs into pangu.common.moe.MoE as `mlp.gate`; the router contract is in moe.py):
    s_TE = sigmoid(W h) in fp32
    chosen = top-K of (s + e_score_correction_bias)    <- the bias changes the SELECTION only
    (n_group > 1: only the experts of the topk_group best groups are candidates, DeepSeek-V3)
    w = s[chosen] / sum_k s[chosen] (norm_topk_prob) * routed_scaling_factor
    probs_TE (for the balance loss) = s / sum_e s       (sigmoid affinities normalised per token)
The scoring itself is ops.moe.topk_route (owned by the MoE-ops author); this file adds the
Ultra-specific pieces: per-expert load counting for the aux-loss-free bias update, and the names of
the balance-loss scopes.

Balance-loss scopes (`aux_loss_scope`; Pangu Ultra MoE trains with "ep_group"): the ranks over which
pangu.common.moe.MoEStats sums counts_i, sum_t probs[t, i] and T before f_i = E/(K*T) * counts_i,
p_i = probs_sum_i / T (the loss of the group's concatenated batch). The model itself computes on its
own micro-batch; parallel_strategies.parallelize sets the group of a parallel run from the mesh:
    "micro_batch": this rank's micro-batch only.
    "ep_group"   : the ranks of this rank's expert-parallel group (one rank when ep = 1).
    "global"     : every data-parallel rank (the whole global micro-batch: a single process's loss).

Aux-loss-free balancing (DeepSeek-V3): after each optimiser step,
    b_i += gamma * sign(mean_j load_j - load_i)
with load = expert assignment counts of the whole step (all micro-batches, all data-parallel
ranks). Everything happens inside the trainer's compiled graphs (a value changed with
`Parameter.set_data` after a graph compiled may never reach it): the step starts with `zero_load`,
the routers accumulate their counts in the non-trained buffer `expert_load` during `loss()`, and
after the optimiser update `update_bias` applies the rule to the loads summed over the data-parallel
ranks and keeps them in `expert_load` (so every checkpoint records the loads behind its bias).
"""
import numpy as np
import mindspore as ms
from mindspore import ops, Tensor

import ops.moe as moe_ops
from pangu.common.layers import zeros_param
from pangu.common.moe import TopKRouter


class SigmoidTopKRouter(TopKRouter):
    """TopKRouter with sigmoid scores + the aux-loss-free bias update, all inside compiled graphs.

    Parameters: `weight` [E, H] (trained), `e_score_correction_bias` [E] (not trained; only when
    `selection_bias`), `expert_load` [E] (not trained; only when `bias_update_rate` > 0): the
    assignment counts of the current optimiser step, accumulated by `construct`; after the update it
    holds the loads the update used (summed over data-parallel ranks), so a checkpoint records them.
    construct -> (weights_TK, experts_TK, probs_TE).
    """

    def __init__(self, hidden_size, num_experts, top_k, selection_bias=True, norm_topk_prob=True,
                 scaling_factor=2.5, bias_update_rate=0.0, n_group=1, topk_group=1):
        super().__init__(hidden_size, num_experts, top_k, "sigmoid", selection_bias,
                         norm_topk_prob, scaling_factor, n_group, topk_group)
        self.num_experts = num_experts
        self.track_load = bias_update_rate > 0
        self.rate = float(bias_update_rate)
        self.expert_load = (zeros_param((num_experts,), ("router",), requires_grad=False)
                            if self.track_load else None)
        self.counts_impl = moe_ops.resolve_impl("expert_counts")  # resolved once, at build time

    def construct(self, h_TH):
        logits_TE = self.matmul(h_TH.astype(ms.float32), self.weight)
        bias = self.e_score_correction_bias if self.has_bias else None
        weights_TK, experts_TK, probs_TE = moe_ops.topk_route(
            logits_TE, self.top_k, "sigmoid", bias, self.norm_topk_prob, self.scaling_factor,
            self.route_impl, self.n_group, self.topk_group)
        if self.track_load:
            counts_E = ops.stop_gradient(moe_ops.expert_counts(experts_TK, self.num_experts,
                                                               self.counts_impl))
            ops.assign_add(self.expert_load, counts_E)
        return weights_TK, experts_TK, probs_TE

    def update_bias(self, load_E, applied):
        """In-graph aux-loss-free step from this step's loads `load_E` (summed over ranks by the caller):
        b += rate * sign(mean load - load) when `applied` (the guard kept the step); records load_E."""
        bias = self.e_score_correction_bias
        new_bias = bias + self.rate * ops.sign(load_E.mean() - load_E)
        ops.assign(bias, ops.select(ops.broadcast_to(applied, bias.shape), new_bias, bias))
        ops.assign(self.expert_load, load_E)
        return load_E

    def zero_load(self):
        """Start a step's count (in-graph)."""
        return ops.assign(self.expert_load, ops.zeros_like(self.expert_load))


# ----------------------------------------------------------------------------- balance loss
def balance_loss_np(probs_TE, experts_TK, num_experts, top_k):
    """Numpy twin (used by tests and analysis): sum_i f_i p_i over the given tokens."""
    probs_TE = np.asarray(probs_TE, np.float64)
    t = probs_TE.shape[0]
    counts = np.bincount(np.asarray(experts_TK).reshape(-1), minlength=num_experts)
    return float((num_experts / (top_k * t) * counts * probs_TE.mean(0)).sum())


# ----------------------------------------------------------------------------- aux-free bias
def expert_bias_update(bias_E, load_E, rate):
    """One aux-loss-free step: b_i + rate * sign(mean_j load_j - load_i) (numpy in, numpy out).

    Underloaded experts (load below the mean) get a larger bias and are chosen more often.
    """
    bias_E = np.asarray(bias_E, np.float32)
    load_E = np.asarray(load_E, np.float64)
    return (bias_E + rate * np.sign(load_E.mean() - load_E)).astype(np.float32)


def routers_with_load(model):
    """All SigmoidTopKRouter cells of `model` that track their expert load, in name order."""
    return [cell for _, cell in sorted(model.cells_and_names(), key=lambda kv: kv[0])
            if isinstance(cell, SigmoidTopKRouter) and cell.track_load]


def reset_expert_load(model):
    """Zero the load counters of a model being built (host-side, before any graph compiles)."""
    for router in routers_with_load(model):
        router.expert_load.set_data(Tensor(np.zeros(router.expert_load.shape, np.float32)))
