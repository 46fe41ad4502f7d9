"""Analytic simulator: per-device memory and step time of a strategy on a hardware profile.

Compute: every GEMM is timed with a roofline, max(FLOPs / (peak*eff), bytes / (HBM*eff)), so
small TP/EP-sharded GEMMs become memory-bound by themselves; flash attention is compute-bound.
Communication: ring collectives / all-to-all / point-to-point at the bandwidth of the slowest
link the group spans (in-node, supernode, or inter-node), found from the rank layout
(tp fastest, then cp, ep, dp, pp). Pipeline: step = (m + (p-1)/v) * t_stage + exposed DP sync +
optimizer; the bubble is (p-1)/(v*m) of the busy time. All constants live in the hardware
profile; nothing is tuned per strategy. Legend: T tokens per micro-batch on one device's
TP group, H hidden, F FFN width, E experts, K top-k, N heads.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from .apply import LAYER_RE, parameter_layouts
from .shape import ModelShape, model_shape, parameters
from .strategy import Hardware, Strategy, load_hardware, validate_structure

BF16 = 2


@dataclass
class Breakdown:
    """Per-step seconds (critical path) and per-device peak bytes."""
    compute: float = 0.0
    tp_comm: float = 0.0
    ep_comm: float = 0.0
    cp_comm: float = 0.0
    pp_p2p: float = 0.0
    pp_bubble: float = 0.0
    dp_sync: float = 0.0
    optimizer: float = 0.0


@dataclass
class Memory:
    weights: float = 0.0
    gradients: float = 0.0
    optimizer_states: float = 0.0
    activations: float = 0.0
    reserved: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer_states + self.activations + self.reserved


@dataclass
class Result:
    name: str
    world_size: int
    step_time: float
    tokens_per_step: int
    tokens_per_s: float
    mfu: float
    model_flops_per_step: float
    time: Breakdown
    memory: Memory                # of the stage with the highest total
    memory_limit: float
    stage_memory: list = field(default_factory=list)
    bubble_fraction: float = 0.0
    stage_time: float = 0.0       # fwd+bwd of one micro-batch on the slowest stage

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.memory_limit


# --------------------------------------------------------------------------- building blocks

class _Ctx:
    def __init__(self, st: Strategy, s: ModelShape, hw: Hardware):
        pc = st.parallel_config
        self.st, self.s, self.hw, self.pc = st, s, hw, pc
        self.tp, self.cp, self.ep, self.pp, self.v = (pc.model_parallel, pc.context_parallel,
                                                      pc.expert_parallel, pc.pipeline_stage, pc.pp_interleave_num)
        self.dp, self.m = pc.data_parallel, pc.micro_batch_num
        self.S = st.training.seq_length
        self.T = pc.micro_batch_size * self.S // self.cp          # tokens of one TP group per micro-batch
        self.sp = self.tp if pc.use_seq_parallel else 1
        self.F = hw.peak_tflops * 1e12 * hw.matmul_efficiency
        self.B = hw.hbm_bandwidth_gbs * 1e9 * hw.bandwidth_efficiency
        self.expert_owners = self.ep * (self.tp if pc.moe_tp_extend_ep else 1)
        self.moe_tp = 1 if pc.moe_tp_extend_ep else self.tp

    # rank = ((pp*DP + dp)*EP + ep)*CP*TP + cp*TP + tp  (EP carved out of DP, TP innermost)
    def ranks(self, axes: tuple) -> list[int]:
        stride = {"tp": 1, "cp": self.tp, "ep": self.tp * self.cp, "dp": self.tp * self.cp * self.ep,
                  "pp": self.tp * self.cp * self.dp}
        size = {"tp": self.tp, "cp": self.cp, "ep": self.ep, "dp": self.dp // self.ep, "pp": self.pp}
        out = [0]
        for a in axes:
            out = [r + k * stride[a] for r in out for k in range(size[a])]
        return out

    def link(self, axes: tuple) -> tuple[float, float, int]:
        """(bandwidth B/s, latency s, nodes spanned) of the slowest link inside a group."""
        cache = self.__dict__.setdefault("_links", {})
        if axes not in cache:
            cache[axes] = self._link(axes)
        return cache[axes]

    def _link(self, axes: tuple) -> tuple[float, float, int]:
        hw = self.hw
        ranks = self.ranks(axes)
        nodes = len({r // self.st.cluster.devices_per_node for r in ranks})
        eff = hw.bandwidth_efficiency
        if nodes == 1:
            return hw.intra_node_bandwidth_gbs * 1e9 * eff, hw.intra_node_latency_us * 1e-6, 1
        if len({r // hw.supernode_devices for r in ranks}) == 1:
            return hw.supernode_bandwidth_gbs * 1e9 * eff, hw.intra_node_latency_us * 1e-6, nodes
        return hw.inter_node_bandwidth_gbs * 1e9 * eff, hw.inter_node_latency_us * 1e-6, nodes

    def ring(self, nbytes: float, axes: tuple, n: int) -> float:
        """All-gather or reduce-scatter of a `nbytes` full tensor over a group of n (ring)."""
        if n <= 1:
            return 0.0
        bw, lat, _ = self.link(axes)
        return (n - 1) / n * nbytes / bw + (n - 1) * lat

    def gemm(self, M: float, K: float, N: float) -> tuple[float, float]:
        flops = 2.0 * M * K * N
        return flops, max(flops / self.F, BF16 * (M * K + K * N + M * N) / self.B)


@dataclass
class _Cost:
    """One unit (layer, head, ...) for one micro-batch on one device, forward only."""
    flops: float = 0.0            # executed FLOPs on this device
    model_flops: float = 0.0      # useful FLOPs (for MFU; excludes TP-replicated work)
    t_gemm: float = 0.0
    t_core: float = 0.0           # attention core
    t_elem: float = 0.0           # memory-bound elementwise
    t_tp: float = 0.0
    t_ep: float = 0.0
    t_cp: float = 0.0             # exposed ring-attention communication
    act: float = 0.0              # bytes kept for backward (no recompute)
    act_selective: float = 0.0
    act_full: float = 0.0

    def add_gemm(self, c: _Ctx, M, K, N, replicated=False):
        f, t = c.gemm(M, K, N)
        self.flops += f
        self.model_flops += f / (c.tp if replicated else 1)
        self.t_gemm += t


def _attention(c: _Ctx, u: _Cost):
    s, T, tp = c.s, c.T, c.tp
    N, H = s.num_heads, s.hidden_size
    if s.attention == "mla":
        u.add_gemm(c, T, H, s.q_lora_dim, replicated=True)
        u.add_gemm(c, T, s.q_lora_dim, N * s.head_dim / tp)
        u.add_gemm(c, T, H, s.kv_lora_dim + s.qk_rope_dim, replicated=True)
        u.add_gemm(c, T, s.kv_lora_dim, N * (s.qk_nope_dim + s.v_head_dim) / tp)
        kv_heads, small = N, 2 * (s.q_lora_dim + s.kv_lora_dim + s.qk_rope_dim) * 2
    else:
        u.add_gemm(c, T, H, (N * s.head_dim + 2 * s.num_kv_heads * s.head_dim) / tp)
        kv_heads, small = s.num_kv_heads, 0
    u.add_gemm(c, T, N * s.v_head_dim / tp, H)
    # causal flash attention: each token attends to S/2 keys on average (CP uses a balanced split)
    core = 2.0 * T * (c.S / 2) * (N / tp) * (s.head_dim + s.v_head_dim)
    u.flops += core
    u.model_flops += core
    t_core = core / c.F
    u.t_core += t_core
    if c.cp > 1:  # ring attention: cp-1 KV block exchanges, overlapped with the core
        kv = BF16 * T * kv_heads * (s.head_dim + s.v_head_dim) / tp
        bw, lat, _ = c.link(("cp",))
        u.t_cp += max(0.0, (c.cp - 1) * (kv / bw + lat) - t_core)
    hs = H / c.sp
    qkv = (N * s.head_dim + kv_heads * (s.head_dim + s.v_head_dim)) / tp
    norms = 2 + (2 if s.sandwich_norm else 0) // 2
    keep = BF16 * (2 * hs + qkv + N * s.v_head_dim / tp + small) + 4 * N / tp  # + softmax LSE fp32
    u.act += keep + BF16 * hs * (norms - 1)
    u.act_selective += keep
    return hs


def _ffn(c: _Cost, ctx: _Ctx, F: float, tokens: float):
    H = ctx.s.hidden_size
    c.add_gemm(ctx, tokens, H, 2 * F)
    c.add_gemm(ctx, tokens, F, H)


def layer_cost(c: _Ctx, kind: str) -> _Cost:
    """kind: 'dense' | 'moe' (MTP layers are costed as 'moe' + extras by the caller)."""
    s, T, tp = c.s, c.T, c.tp
    H = s.hidden_size
    u = _Cost()
    hs = _attention(c, u)
    tp_colls = 2 * c.ring(BF16 * T * H, ("tp",), tp)            # attention: all-gather + reduce-scatter
    if kind == "moe":
        E, K = s.num_experts, s.top_k
        extend = c.pc.moe_tp_extend_ep
        u.add_gemm(c, T, H, E, replicated=True)
        local = E // c.expert_owners
        # routed copies a device computes: extend-EP keeps its own T/tp tokens' worth; plain EP with
        # expert-TP gathers the whole TP group's dispatched tokens (Megatron's alltoall + allgather)
        disp = T / tp * K if extend else T * K
        per_expert = max(1.0, disp * (c.expert_owners if extend else c.ep) / E)
        f1, t1 = c.gemm(per_expert, H, 2 * s.moe_ffn / c.moe_tp)
        f2, t2 = c.gemm(per_expert, s.moe_ffn / c.moe_tp, H)
        u.flops += local * (f1 + f2)
        u.model_flops += local * (f1 + f2)
        u.t_gemm += local * (t1 + t2)
        if s.shared_ffn:
            _ffn(u, c, s.shared_ffn / tp, T)
        ffn_width = disp / T * s.moe_ffn / c.moe_tp + s.shared_ffn / tp
        u.t_ep += 2 * _alltoall(c, T / tp * K * H * BF16)        # dispatch + combine of local copies
        u.t_elem += disp * H * BF16 * 4 / c.B                     # permute + unpermute
        tp_colls += 2 * c.ring(BF16 * T * H, ("tp",), tp)        # hidden for router / shared expert
        if not extend:
            tp_colls += 2 * c.ring(BF16 * T * K * H, ("tp",), tp)  # expert-TP gathers dispatched tokens
        extra_act = BF16 * (disp / T) * (2 * H + 3 * s.moe_ffn / c.moe_tp) + 4 * E \
            + BF16 * 3 * s.shared_ffn / tp
        sel_drop = BF16 * ((disp / T) * s.moe_ffn / c.moe_tp + s.shared_ffn / tp)
    else:
        _ffn(u, c, s.dense_ffn / tp, T)
        ffn_width = s.dense_ffn / tp
        extra_act = BF16 * 3 * s.dense_ffn / tp
        sel_drop = BF16 * s.dense_ffn / tp
        tp_colls += 2 * c.ring(BF16 * T * H, ("tp",), tp)
    n_norm = 4 if s.sandwich_norm else 2
    rope = s.qk_rope_dim if s.attention == "mla" else s.head_dim
    per_token = BF16 * (n_norm * 2 * hs + 6 * hs + 3 * ffn_width + 4 * s.num_heads * rope / tp)
    u.t_elem += T * per_token / c.B
    ffn_in = BF16 * 2 * hs
    u.act = T * (u.act + extra_act + ffn_in)
    u.act_selective = T * (u.act_selective + extra_act - sel_drop + BF16 * hs)
    u.act_full = T * BF16 * hs                                   # the layer input only
    u.t_tp += tp_colls
    return u


def _alltoall(c: _Ctx, bytes_per_device: float) -> float:
    """One EP all-to-all (dispatch or combine) of `bytes_per_device` (all K copies of local tokens)."""
    R = c.expert_owners
    if R <= 1:
        return 0.0
    axes = ("tp", "ep") if c.pc.moe_tp_extend_ep else ("ep",)
    ranks = c.ranks(axes)
    dpn = c.hw.devices_per_node
    nodes = len({r // dpn for r in ranks})
    bw_in = c.hw.intra_node_bandwidth_gbs * 1e9 * c.hw.bandwidth_efficiency
    bw, lat, _ = c.link(axes)
    if nodes == 1:
        return (R - 1) / R * bytes_per_device / bw + lat
    remote_share = (R - R / nodes) / R                        # of the K copies, those leaving the node
    if not c.pc.hierarchical_alltoall:
        return max(bytes_per_device * remote_share / bw, bytes_per_device * (1 - remote_share) / bw_in) + 2 * lat
    # hierarchical: one copy per destination node crosses the network, then spreads inside the node
    K, G = c.s.top_k, c.s.num_expert_groups
    if G > 1 and G % nodes == 0:   # MoGE with whole groups per node: every token hits every node once
        hit = float(nodes)
    else:
        hit = nodes * (1 - (1 - 1 / nodes) ** K)
    inter = bytes_per_device / K * hit * (nodes - 1) / nodes
    return inter / bw + bytes_per_device / bw_in + 2 * lat


def _head_cost(c: _Ctx) -> _Cost:
    """Final norm + lm_head + cross-entropy on the last stage."""
    s = c.s
    u = _Cost()
    V = s.vocab_size / (1 if c.pc.vocab_emb_dp else c.tp)
    u.add_gemm(c, c.T, s.hidden_size, V, replicated=c.pc.vocab_emb_dp)
    u.t_elem += c.T * V * 4 * 3 / c.B
    u.act = c.T * (V * 4 + BF16 * s.hidden_size)     # fp32 logits kept for the loss backward
    u.act_selective = u.act_full = u.act
    if c.tp > 1 and not c.pc.vocab_emb_dp:
        u.t_tp += c.ring(BF16 * c.T * s.hidden_size, ("tp",), c.tp)
    return u


def _vision_cost(c: _Ctx) -> _Cost:
    """ViT + merger for one micro-batch's images on the first stage (window attention)."""
    v, s, tp = c.s.vision, c.s, c.tp
    u = _Cost()
    img = c.st.training.image_tokens * c.pc.micro_batch_size / c.cp
    if v is None or img <= 0:
        return u
    P = img * v.spatial_merge_size ** 2                 # patches
    C, Fv, Nh = v.hidden_size, v.intermediate_size, v.num_heads
    win = (v.window_size // v.patch_size) ** 2
    for b in range(v.depth):
        u.add_gemm(c, P, C, 3 * C / tp)
        u.add_gemm(c, P, C / tp, C)
        u.add_gemm(c, P, C, 2 * Fv / tp)
        u.add_gemm(c, P, Fv / tp, C)
        ctx = P if b in v.fullatt_block_indexes else win
        core = 2.0 * P * ctx * (Nh / tp) * 2 * (C // Nh)
        u.flops += core
        u.model_flops += core
        u.t_core += core / c.F
        u.act += P * BF16 * (4 * C / c.sp + 4 * C / tp + 3 * Fv / tp)
        u.act_selective += P * BF16 * (3 * C / c.sp + 4 * C / tp + 2 * Fv / tp)
        u.act_full += P * BF16 * C / c.sp
        if tp > 1:
            u.t_tp += 4 * c.ring(BF16 * P * C, ("tp",), tp)
    M = 4 * C
    u.add_gemm(c, P / 4, M, M / tp)
    u.add_gemm(c, P / 4, M / tp, s.hidden_size)
    return u


def _mtp_extra(c: _Ctx) -> _Cost:
    s = c.s
    u = _Cost()
    u.add_gemm(c, c.T, 2 * s.hidden_size, s.hidden_size, replicated=True)
    h = _head_cost(c)
    for k in ("flops", "model_flops", "t_gemm", "t_elem", "t_tp", "act", "act_selective", "act_full"):
        setattr(u, k, getattr(u, k) + getattr(h, k))
    return u


# --------------------------------------------------------------------------- parameters per stage

def _stage_param_bytes(st: Strategy, s: ModelShape, cfg: Any) -> list[dict]:
    """Per stage: local parameter elements, and the same divided by the ZeRO replica group."""
    pc = st.parallel_config
    pp = pc.pipeline_stage
    out = [dict(n=0.0, n_sharded=0.0, grad_sync=[]) for _ in range(pp)]

    def add(summary, times, stage):
        d = out[stage]
        d["n"] += times * summary["n"]
        d["n_sharded"] += times * summary["n_sharded"]
        for (group, is_expert), numel in summary["sync"].items():
            d["grad_sync"].append((times * numel, group, is_expert))

    fingerprint, by_layer, others = _model_parameters(cfg, s)
    # representative layers: lay out the first dense / moe layer once, then count each stage's layers
    from .apply import layer_stage
    rep, counts = {}, {}
    for i in range(s.num_layers):
        kind = "moe" if s.is_moe_layer(i) else "dense"
        rep.setdefault(kind, by_layer[i])
        counts[(kind, layer_stage(i, s, st))] = counts.get((kind, layer_stage(i, s, st)), 0) + 1
    key = (pc.data_parallel, pc.model_parallel, pc.expert_parallel, pc.context_parallel, pc.vocab_emb_dp,
           pc.moe_tp_extend_ep)
    for (kind, stage), n in counts.items():
        add(_cached_summary(fingerprint, key, kind, rep[kind], st, cfg), n, stage)
    # everything that is not a decoder layer (embeddings, head, ViT, MTP layers) is placed by name
    for stage in range(pp):
        add(_cached_summary(fingerprint, key + (pp, stage), "others", others, st, cfg, stage), 1, stage)
    return out


_LAYOUT_CACHE: dict = {}
_PARAM_CACHE: dict = {}


def _model_parameters(cfg: Any, s: ModelShape) -> tuple[str, dict, tuple]:
    """(fingerprint, {decoder layer: its parameters}, the other parameters) of the real model, read from
    its spec once per config (a full-size model lists its parameters in about a second)."""
    fingerprint = json.dumps(cfg, sort_keys=True) if isinstance(cfg, dict) else repr(cfg)
    if fingerprint not in _PARAM_CACHE:
        by_layer, others = {}, []
        for p in parameters(cfg):
            m = LAYER_RE.search(p.name)
            if m and int(m.group(1)) < s.num_layers:
                by_layer.setdefault(int(m.group(1)), []).append(p)
            else:
                others.append(p)   # embeddings, head, final norm, ViT, MTP layers
        if len(_PARAM_CACHE) > 16:
            _PARAM_CACHE.clear()
        _PARAM_CACHE[fingerprint] = (fingerprint, {i: tuple(ps) for i, ps in by_layer.items()}, tuple(others))
    return _PARAM_CACHE[fingerprint]


def _cached_summary(fingerprint, key, kind, params, st, cfg, stage=None):
    """Local parameter elements of one device (all EP ranks hold the same amount), per ZeRO /
    grad-sync group. Depends only on the in-stage mesh (+ pp for non-layer params)."""
    k = (fingerprint, key, kind)
    if k not in _LAYOUT_CACHE:
        if len(_LAYOUT_CACHE) > 1024:
            _LAYOUT_CACHE.clear()
        summ = dict(n=0.0, n_sharded=0.0, sync={})
        for pl in parameter_layouts(st, cfg, params):
            if stage is not None and pl.stage != stage:
                continue
            summ["n"] += pl.local_numel
            summ["n_sharded"] += pl.local_numel / pl.replicas
            g = (pl.replicas, pl.is_expert)
            summ["sync"][g] = summ["sync"].get(g, 0) + pl.local_numel
        _LAYOUT_CACHE[k] = summ
    return _LAYOUT_CACHE[k]


# --------------------------------------------------------------------------- simulate

def in_flight(c: _Ctx, stage: int) -> float:
    """Micro-batches of a whole stage whose activations are alive at the peak (1F1B / interleaved)."""
    p, v, m = c.pp, c.v, c.m
    if p == 1:
        return 1.0
    if v == 1:
        return float(min(m, p - stage))
    chunks = min(m * v, (p - stage - 1) * 2 + (v - 1) * p + 1)   # Megatron interleaved warm-up + 1
    return chunks / v


def simulate(st: Strategy, cfg: Any, hw: Optional[Hardware] = None, check: bool = True) -> Result:
    s = model_shape(cfg)
    hw = hw or load_hardware(st.hardware)
    if check:
        validate_structure(st, s, hw)
    c = _Ctx(st, s, hw)
    pc, pp, v, m = c.pc, c.pp, c.v, c.m
    rc = st.recompute

    costs = {k: layer_cost(c, k) for k in ("dense", "moe") if k == "moe" and s.is_moe or k == "dense"
             and s.num_dense_layers}
    from .apply import layer_stage
    stage_units: list[list[_Cost]] = [[] for _ in range(pp)]
    for i in range(s.num_layers):
        stage_units[layer_stage(i, s, st)].append(costs["moe" if s.is_moe_layer(i) else "dense"])
    stage_units[-1].append(_head_cost(c))
    for _ in range(s.num_mtp_layers):
        stage_units[-1] += [costs["moe" if s.is_moe else "dense"], _mtp_extra(c)]
    if s.vision is not None:
        stage_units[0].append(_vision_cost(c))
    emb = _Cost()
    emb.t_elem = c.T * s.hidden_size * BF16 * 2 / c.B
    emb.act = emb.act_selective = emb.act_full = c.T * BF16 * s.hidden_size / c.sp
    stage_units[0].append(emb)

    params = _stage_param_bytes(st, s, cfg)
    level = pc.optimizer_level
    per_stage, mems = [], []
    for k, units in enumerate(stage_units):
        fwd_comp = sum(u.t_gemm + u.t_core + u.t_elem for u in units)
        comm = sum(u.t_tp + u.t_ep + u.t_cp for u in units)
        recompute = {"none": 0.0, "selective": sum(u.t_elem for u in units),
                     "full": fwd_comp + comm}[rc]   # full recompute replays the layer incl. its collectives
        t_fwd_bwd = 3 * fwd_comp + 2 * comm + recompute
        per_stage.append(dict(
            t=t_fwd_bwd, compute=3 * fwd_comp + (recompute if rc != "full" else fwd_comp),
            tp=2 * sum(u.t_tp for u in units) * (1.5 if rc == "full" else 1),
            ep=2 * sum(u.t_ep for u in units) * (1.5 if rc == "full" else 1),
            cp=2 * sum(u.t_cp for u in units) * (1.5 if rc == "full" else 1),
            bwd=2 * fwd_comp + comm))
        act_attr = {"none": "act", "selective": "act_selective", "full": "act_full"}[rc]
        act = in_flight(c, k) * sum(getattr(u, act_attr) for u in units)
        if rc != "none":   # one layer's full activations are rebuilt during its backward
            act += max(u.act for u in units)
        n, ns = params[k]["n"], params[k]["n_sharded"]
        if level is None:
            mem = Memory(weights=4 * n, gradients=4 * n, optimizer_states=8 * n)
        else:   # fp32 master sharded + bf16 gathered compute copy; level2 also shards gradients
            mem = Memory(weights=4 * ns + BF16 * n, gradients=4 * (ns if level != "level1" else n),
                         optimizer_states=8 * ns)
        mem.activations = act
        mem.reserved = hw.reserved_gb * 1e9
        mems.append(mem)

    t_stage = max(d["t"] for d in per_stage)
    worst = max(range(pp), key=lambda k: per_stage[k]["t"])
    # point-to-point between stages: v boundaries per micro-batch, forward and backward
    p2p = 0.0
    if pp > 1:
        bw, lat, _ = c.link(("pp",))
        p2p = 2 * v * (BF16 * c.T * s.hidden_size / c.sp / bw + lat)
    busy = m * (t_stage + p2p)
    bubble = (pp - 1) / v * (t_stage + p2p) if pp > 1 else 0.0
    # data-parallel gradient sync (reduce-scatter + all-gather = all-reduce volume) of fp32 grads
    # (MindSpore's default gradient_fp32_sync). Stage k can overlap it with its last micro-batch's
    # backward plus the k chunk-backwards that stage 0 still runs after stage k is done.
    dp_exposed = 0.0
    for k in range(pp):
        dp_t = 0.0
        for numel, group, is_expert in params[k]["grad_sync"]:
            if group > 1:
                bw, lat, _ = c.link(("cp", "dp") if is_expert else ("cp", "ep", "dp"))
                dp_t += 2 * (group - 1) / group * 4 * numel / bw
        if pc.data_parallel * pc.context_parallel > 1:
            dp_t += 2 * math.log2(pc.data_parallel * pc.context_parallel) * hw.inter_node_latency_us * 1e-6
        slack = per_stage[k]["bwd"] * (1 + k / v)
        dp_exposed = max(dp_exposed, dp_t - slack)
    n_local = params[worst]["n_sharded"] if level else params[worst]["n"]
    opt_t = n_local * (4 + 4 + 8) * 2 / c.B
    step = busy + bubble + dp_exposed + opt_t

    tokens = st.tokens_per_step
    # model FLOPs: 3x forward of the real layers on all devices, no recompute, no TP-replicated work
    model_fwd = 0.0
    for units in stage_units:
        model_fwd += sum(u.model_flops for u in units)
    model_flops = 3 * model_fwd * m * pc.data_parallel * pc.context_parallel * pc.model_parallel
    mfu = model_flops / (step * st.world_size * hw.peak_tflops * 1e12)
    d = per_stage[worst]
    tb = Breakdown(compute=m * d["compute"], tp_comm=m * d["tp"], ep_comm=m * d["ep"], cp_comm=m * d["cp"],
                   pp_p2p=m * p2p, pp_bubble=bubble, dp_sync=dp_exposed, optimizer=opt_t)
    peak = max(mems, key=lambda x: x.total)
    return Result(st.name, st.world_size, step, tokens, tokens / step, mfu, model_flops, tb, peak,
                  hw.hbm_gb * 1e9, mems, bubble / busy if busy else 0.0, t_stage)


def check_memory(st: Strategy, cfg: Any, hw: Optional[Hardware] = None) -> Result:
    """validate_structure + the per-device memory must fit the profile's HBM."""
    r = simulate(st, cfg, hw)
    if not r.fits:
        raise ValueError(f"memory: {r.memory.total / 1e9:.1f} GB per device > {r.memory_limit / 1e9:.0f} GB HBM "
                         f"(weights {r.memory.weights / 1e9:.1f}, grads {r.memory.gradients / 1e9:.1f}, optimizer "
                         f"{r.memory.optimizer_states / 1e9:.1f}, activations {r.memory.activations / 1e9:.1f}); "
                         "enable recompute / optimizer_shard or add pipeline / tensor parallelism")
    return r
