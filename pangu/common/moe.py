"""Mixture-of-Experts layer: route -> dispatch -> experts -> combine (+ ungated shared expert).

Legend: B batch, S sequence, T = B*S tokens, H hidden, I expert intermediate, E routed experts,
K experts per token, A = T*K assignments, P padded assignment slots, NB expert blocks, blk rows
per block.

Router contract: a Cell `construct(self, h_TH) -> (weights_TK fp32,
experts_TK int32, probs_TE fp32)`; probs_TE are the scores the balance loss uses. The router is
stored as `self.gate` so its projection is named `mlp.gate.weight` like the serving layout.

Routed experts are stored STACKED (`experts.gate_proj` [E, I, H], `experts.up_proj` [E, I, H],
`experts.down_proj` [E, H, I], each slice in [out, in] layout); convert.py maps them to the
per-expert serving names `experts.{e}.{gate,up,down}_proj.weight`.

expert_impl:
  "grouped" : sort the assignments by expert (ops.moe.sort_permute: unpadded rows + counts_E) ->
              three grouped matmuls (ops.grouped_matmul: per-expert GEMMs on CPU, grouped_matmul
              on Ascend) around SwiGLU -> ops.moe.sort_unpermute; exactly the active FLOPs, no
              weight copies. Fastest on CPU (docs/ops.md), the default.
  "batched" : dropless expert-blocked permutation (ops.moe.permute_plan): every assignment is
              computed once (+ <= E*blk padding rows) with one block-batched matmul per
              projection over gathered per-block weight copies; plain MindSpore ops.
  "loop"    : for each expert run it on ALL tokens and add weight * output where chosen
              (obvious reference, E/K times the necessary FLOPs).
"""
import mindspore as ms
from mindspore import nn, ops

import ops.moe as moe_ops
from ops.grouped_matmul import grouped_matmul, resolve_impl as gmm_impl
from ops.swiglu import swiglu, resolve_impl as swiglu_impl
from pangu.common.layers import ones_param, zeros_param
from pangu.common.mlp import SwiGLUMLP

EXPERT_IMPLS = ("grouped", "batched", "loop")


# ----------------------------------------------------------------------------- routers
class MoGERouter(nn.Cell):
    """Mixture of Grouped Experts router (Pangu Pro MoE): global softmax over E experts, E split
    into K contiguous groups, argmax per group, weight = p[e] * router_scale[e], no renorm."""

    def __init__(self, hidden_size, num_experts, num_groups):
        super().__init__()
        if num_experts % num_groups:
            raise ValueError(f"num_experts: {num_experts} is not divisible by num_groups="
                             f"{num_groups}; use a multiple of the group count")
        self.weight = zeros_param((num_experts, hidden_size), ("router", "embed"))     # [E, H]
        self.router_scale = ones_param((1, num_experts), (None, "router"))            # [1, E]
        self.num_groups = num_groups
        self.matmul = ops.MatMul(transpose_b=True)
        self.route_impl = moe_ops.resolve_impl("moge_route")      # resolved once, at build time

    def construct(self, h_TH):
        logits_TE = self.matmul(h_TH.astype(ms.float32), self.weight)
        return moe_ops.moge_route(logits_TE, self.num_groups, self.router_scale, self.route_impl)


class TopKRouter(nn.Cell):
    """Plain top-k router: softmax or sigmoid scores; optional selection-only bias
    `e_score_correction_bias` [E] (not trained by gradients; updated by the aux-loss-free balancing
    rule, pangu.common.routers); optional group-limited selection (DeepSeek-V3's n_group /
    topk_group); optional renormalisation; scaling factor."""

    def __init__(self, hidden_size, num_experts, top_k, score_func="softmax",
                 selection_bias=False, norm_topk_prob=False, scaling_factor=1.0, n_group=1, topk_group=1):
        super().__init__()
        self.weight = zeros_param((num_experts, hidden_size), ("router", "embed"))
        self.e_score_correction_bias = (zeros_param((num_experts,), ("router",), requires_grad=False)
                                        if selection_bias else None)
        self.has_bias = selection_bias
        self.top_k = top_k
        self.score_func = score_func
        self.norm_topk_prob = norm_topk_prob
        self.scaling_factor = float(scaling_factor)
        self.n_group, self.topk_group = int(n_group), int(topk_group)   # group-limited selection
        self.matmul = ops.MatMul(transpose_b=True)
        self.route_impl = moe_ops.resolve_impl("topk_route")      # resolved once, at build time

    def construct(self, h_TH):
        logits_TE = self.matmul(h_TH.astype(ms.float32), self.weight)
        bias = self.e_score_correction_bias if self.has_bias else None
        return moe_ops.topk_route(logits_TE, self.top_k, self.score_func, bias, self.norm_topk_prob,
                                  self.scaling_factor, self.route_impl, self.n_group, self.topk_group)


# ----------------------------------------------------------------------------- experts
class GroupedExperts(nn.Cell):
    """E SwiGLU experts with stacked weights; `grouped`, `batched` and `loop` compute paths.

    construct(x_TH, weights_TK, experts_TK) -> y_TH runs the path named by `expert_impl`."""

    def __init__(self, num_experts, hidden_size, intermediate_size, compute_dtype=ms.float32,
                 swiglu_impl_name="auto", expert_impl="grouped"):
        super().__init__()
        if expert_impl not in EXPERT_IMPLS:
            raise ValueError(f"expert_impl: unknown {expert_impl!r}; use one of {EXPERT_IMPLS}")
        self.expert_impl = expert_impl
        self.num_experts = num_experts
        self.gate_proj = zeros_param((num_experts, intermediate_size, hidden_size), ("expert", "expert_mlp", "embed"))
        self.up_proj = zeros_param((num_experts, intermediate_size, hidden_size), ("expert", "expert_mlp", "embed"))
        self.down_proj = zeros_param((num_experts, hidden_size, intermediate_size), ("expert", "embed", "expert_mlp"))
        self.compute_dtype = compute_dtype
        self.act_impl = swiglu_impl(swiglu_impl_name)
        self.plan_impl = moe_ops.resolve_impl("permute_plan")     # resolved once, at build time
        self.sort_impl = moe_ops.resolve_impl("sort_permute")
        self.unsort_impl = moe_ops.resolve_impl("sort_unpermute")
        # (only the grouped path needs the grouped-matmul kernel: don't build it for the others)
        self.gmm_impl = gmm_impl() if expert_impl == "grouped" else None
        self.bmm = ops.BatchMatMul(transpose_b=True)
        self.mm = ops.MatMul(transpose_b=True)
        # Expert / tensor parallelism, set from outside (parallel_strategies.parallelize): `dispatch` maps
        # (x, weights, experts) to what this rank's experts compute on (e.g. every rank's tokens, with the
        # ids of this rank's experts made local), `combine` maps the partial output back to this rank's
        # tokens. None: every expert is here.
        self.dispatch = None
        self.combine = None

    def construct(self, x_TH, weights_TK, experts_TK):
        if self.dispatch is not None:
            x_TH, weights_TK, experts_TK = self.dispatch(x_TH, weights_TK, experts_TK)
        if self.expert_impl == "grouped":
            y_TH = self.run_grouped(x_TH, weights_TK, experts_TK)
        elif self.expert_impl == "batched":
            y_TH = self.run_batched(x_TH, weights_TK, experts_TK)
        else:
            y_TH = self.run_loop(x_TH, weights_TK, experts_TK)
        if self.combine is not None:
            y_TH = self.combine(y_TH)
        return y_TH

    def run_loop(self, x_TH, weights_TK, experts_TK):
        """Reference: y = sum_e w_e(t) * Expert_e(x_t), Expert_e evaluated on every token."""
        cd = self.compute_dtype
        x = x_TH.astype(cd)
        y_TH = ops.zeros(x_TH.shape, ms.float32)
        for e in range(self.num_experts):
            w_T = (weights_TK * (experts_TK == e).astype(ms.float32)).sum(-1)
            g = self.mm(x, self.gate_proj[e].astype(cd))
            u = self.mm(x, self.up_proj[e].astype(cd))
            out = self.mm(swiglu(g, u, self.act_impl), self.down_proj[e].astype(cd))
            y_TH = y_TH + w_T[:, None] * out.astype(ms.float32)
        return y_TH.astype(cd)

    def run_batched(self, x_TH, weights_TK, experts_TK):
        """Dispatch into expert blocks -> block-batched SwiGLU -> combine."""
        cd = self.compute_dtype
        t, k = experts_TK.shape
        # Blocks of ~half the mean expert load (default_block with 2E): fewer padded rows than the
        # mean load (<= A/2 instead of <= A) for 1.5x more blocks; measured fastest on CPU at the
        # bench shape (docs/benchmarks.md, 'MoE block size').
        blk = moe_ops.default_block(t * k, 2 * self.num_experts)
        dest_A, slot_src_P, block_expert_NB = moe_ops.permute_plan(
            experts_TK, self.num_experts, blk, self.plan_impl)
        x_PH = moe_ops.permute(x_TH.astype(cd), slot_src_P)                    # dispatch
        nb = block_expert_NB.shape[0]
        x_NbH = x_PH.reshape(nb, blk, -1)
        wg_NIH = ops.gather(self.gate_proj, block_expert_NB, 0).astype(cd)
        wu_NIH = ops.gather(self.up_proj, block_expert_NB, 0).astype(cd)
        wd_NHI = ops.gather(self.down_proj, block_expert_NB, 0).astype(cd)
        act_NbI = swiglu(self.bmm(x_NbH, wg_NIH), self.bmm(x_NbH, wu_NIH), self.act_impl)
        out_PH = self.bmm(act_NbI, wd_NHI).reshape(nb * blk, -1)                 # experts
        return moe_ops.unpermute(out_PH, dest_A, weights_TK)                     # combine

    def run_grouped(self, x_TH, weights_TK, experts_TK):
        """Sort assignments by expert -> grouped SwiGLU (3 grouped matmuls) -> unsort + combine."""
        cd = self.compute_dtype
        x_AH, order_A, counts_E = moe_ops.sort_permute(x_TH.astype(cd), experts_TK,
                                                       self.num_experts, self.sort_impl)  # dispatch
        gate_AI = grouped_matmul(x_AH, self.gate_proj.astype(cd), counts_E, self.gmm_impl)
        up_AI = grouped_matmul(x_AH, self.up_proj.astype(cd), counts_E, self.gmm_impl)
        act_AI = swiglu(gate_AI, up_AI, self.act_impl)
        out_AH = grouped_matmul(act_AI, self.down_proj.astype(cd), counts_E, self.gmm_impl)
        return moe_ops.sort_unpermute(out_AH, order_A, weights_TK, self.unsort_impl)  # combine


# ----------------------------------------------------------------------------- routing statistics
class MoEStats(nn.Cell):
    """The balance loss and the imbalance score of one MoE layer's routing.

    construct(probs_TE, experts_TK) -> (balance [] = alpha-free sum_i f_i p_i, imbalance [] no gradient)
        f_i = E / (K T) * count_i (no gradient), p_i = sum_t probs[t, i] / T,
        imbalance = (max_d load_d - min_d load_d) / T, load_d = assignments of the E/D experts of device d
    With `reduce` set (from outside, parallel_strategies.parallelize: an AllReduce-sum over the ranks
    whose tokens the statistics cover), counts, prob sums and T are totals over that group: the loss of
    the group's concatenated batch. AllReduce's bprop sums the gradient over the group, so with the
    trainer's data-parallel gradient sum each rank's p-gradient is exactly that of the group loss.
    None: this micro-batch's own statistics.
    """

    def __init__(self, num_experts, top_k, num_devices):
        super().__init__()
        if num_experts % num_devices:
            raise ValueError(f"imbalance devices: {num_devices} do not divide {num_experts} experts; "
                             "use a divisor of num_experts")
        self.num_experts, self.top_k, self.num_devices = num_experts, top_k, num_devices
        self.counts_impl = moe_ops.resolve_impl("expert_counts")  # resolved once, at build time
        self.reduce = None

    def construct(self, probs_TE, experts_TK):
        e = self.num_experts
        counts_E = ops.stop_gradient(moe_ops.expert_counts(experts_TK, e, self.counts_impl))
        psum_E = probs_TE.astype(ms.float32).sum(0)
        tokens_1 = ops.full((1,), probs_TE.shape[0], dtype=ms.float32)
        if self.reduce is not None:
            stats = self.reduce(ops.concat((counts_E, psum_E, tokens_1)))
            counts_E = ops.stop_gradient(stats[:e])
            psum_E = stats[e:2 * e]
            tokens_1 = ops.stop_gradient(stats[2 * e:])
        total = tokens_1[0]
        balance = (counts_E * (e / self.top_k) / total * (psum_E / total)).sum()
        load_D = counts_E.reshape(self.num_devices, e // self.num_devices).sum(1)
        imbalance = (load_D.max() - load_D.min()) / total
        return balance, ops.stop_gradient(imbalance)


# ----------------------------------------------------------------------------- MoE layer
class MoE(nn.Cell):
    """route -> dispatch -> experts -> combine, plus an optional ungated shared SwiGLU expert.

    construct(h [..., H]) -> (y [..., H], balance [] (alpha-free sum f_i p_i), imbalance [])
    `imbalance_devices` = M devices for the imbalance score (experts placed contiguously); both
    statistics come from `self.stats` (MoEStats).
    """

    def __init__(self, hidden_size, moe_intermediate_size, num_experts, top_k, router,
                 shared_intermediate_size=0, expert_impl="grouped", compute_dtype=ms.float32,
                 imbalance_devices=None, swiglu_impl_name="auto"):
        super().__init__()
        self.gate = router
        self.experts = GroupedExperts(num_experts, hidden_size, moe_intermediate_size,   # validates
                                      compute_dtype, swiglu_impl_name, expert_impl)  # expert_impl
        self.has_shared = shared_intermediate_size > 0
        self.shared_expert = (SwiGLUMLP(hidden_size, shared_intermediate_size, compute_dtype,
                                        swiglu_impl_name) if self.has_shared else None)
        self.num_experts = num_experts
        self.top_k = top_k
        self.stats = MoEStats(num_experts, top_k, imbalance_devices or top_k)

    def construct(self, h):
        shape = h.shape
        h_TH = h.reshape(-1, shape[-1])
        weights_TK, experts_TK, probs_TE = self.gate(h_TH)                       # route
        y_TH = self.experts(h_TH, weights_TK, experts_TK)    # dispatch, experts, combine
        if self.has_shared:
            y_TH = y_TH + self.shared_expert(h_TH).astype(y_TH.dtype)            # ungated
        balance, imbalance = self.stats(probs_TE, experts_TK)
        return y_TH.reshape(shape[:-1] + (y_TH.shape[-1],)), balance, imbalance
