"""Inference cost model: time and memory of one prefill batch or one decode step on a hardware profile.

An *instance* is N devices serving one copy of the model: attention runs tensor-parallel over `tp`
devices and data-parallel over the N/tp groups (DP-attention: each group owns its own sequences and
KV cache); routed experts are spread over all N devices (EP = N, experts whole, redundant copies
when N > E so that every device holds one); dense FFNs, shared experts, embedding and lm_head are
sharded over `tp` like attention. This is the layout of CloudMatrix-Infer's decode (DP320 attention +
EP320 experts, arXiv:2506.12708) and of vLLM-Ascend / MindIE's DP + EP deployments.

Every kernel group is timed with the roofline of the training simulator,
`max(FLOPs / (peak * matmul_efficiency), bytes / (HBM * bandwidth_efficiency))`, one op at a time:
  * decode is HBM-bound: each step reads every resident weight it uses once (only the experts that
    received a token), and each sequence's whole KV cache once. MLA caches the compressed latent
    (kv_lora + rope = 576 values per token per layer for DeepSeek / Pangu Ultra) and decodes with the
    up-projections absorbed into the query / output (attention over the latent, 128 heads x 1,088
    dims of FLOPs per cached token); GQA caches full K and V of its KV heads;
  * prefill is compute-bound: 2 x active parameters per token + causal attention over the prompt;
  * INT8 (W8A8) halves weight bytes, runs the projections and experts at the INT8 peak, and sends
    the MoE dispatch in INT8 (CloudMatrix-Infer's early quantisation); attention cores, router,
    lm_head and the combine stay 16-bit;
  * EP dispatch / combine: each device sends the K copies of its tokens, (1 - 1/N) of them leave
    the device, at the measured per-rank all-to-all bandwidth of the profile (CloudMatrix384's UB)
    or the link's bandwidth (HCCS inside a node, RoCE between nodes);
  * microbatch pipelining (CloudMatrix-Infer Sec. 4): two half batches on two streams, one's
    attention / experts overlapping the other's all-to-all. Computation of both halves shares the
    cores and HBM (weights are read once per half: in a weight-bound decode it costs), communication
    hides behind it: layer time = max(compute of both halves, communication of both halves).

Legend: N devices per instance, t attention TP, d = N/t DP-attention groups, b sequences per group,
q query tokens per sequence per step (1, or 2 with one MTP draft token), n = b*q tokens per group,
T = n/t tokens per device entering the MoE, c cached tokens a query attends to, H hidden, E routed
experts, K top-k, F expert FFN width, V vocabulary. All results are predictions of this model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from .shape import ModelShape
from .strategy import Hardware

BYTES = {"bf16": 2, "fp16": 2, "int8": 1}
HALF = 2    # router, lm_head, embedding, norms, attention core and the MoE combine stay 16-bit


# --------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class Precision:
    """Weight / matmul and KV-cache dtypes of a deployment."""
    weights: str = "bf16"   # bf16 | fp16 | int8 (W8A8: int8 weights and activations into the matmuls)
    kv: str = "bf16"        # KV cache: bf16 | fp16 | int8

    @property
    def weight_bytes(self) -> int:
        return BYTES[self.weights]

    @property
    def kv_bytes(self) -> int:
        return BYTES[self.kv]

    @property
    def dispatch_bytes(self) -> int:
        return 1 if self.weights == "int8" else 2


def check_precision(prec: Precision, hw: Hardware) -> None:
    """One-line refusal of a dtype the device cannot run."""
    for what, dt in (("dtype", prec.weights), ("kv-dtype", prec.kv)):
        if dt not in BYTES:
            raise ValueError(f"{what}: unknown {dt!r}; use one of {sorted(BYTES)}")
    supported = tuple(hw.matmul_dtypes)
    for what, dt in (("dtype", prec.weights), ("kv-dtype", prec.kv)):
        if dt not in supported:
            raise ValueError(f"{what}: {dt} is not supported on {hw.name} (it runs {list(supported)}); "
                             f"use --{what} {'fp16' if 'fp16' in supported else supported[0]}")


@dataclass(frozen=True)
class Instance:
    """One serving instance: `devices` devices, attention TP `tp`, DP-attention devices/tp, EP = devices."""
    devices: int
    tp: int = 1

    def __post_init__(self):
        if self.devices < 1 or self.tp < 1 or self.devices % self.tp:
            raise ValueError(f"instance: {self.devices} devices with attention TP {self.tp}; "
                             "TP must divide the device count")

    @property
    def dp(self) -> int:
        return self.devices // self.tp

    @property
    def ep(self) -> int:
        return self.devices

    def label(self) -> str:
        return f"{self.devices} dev: TP{self.tp} x DP{self.dp} attention, EP{self.ep}"


@dataclass
class StepCost:
    """Seconds of one forward (a decode step or a prefill batch) on one device, and where they go."""
    seconds: float
    breakdown: dict = field(default_factory=dict)   # component -> seconds, before overlap
    compute_s: float = 0.0        # compute ops (roofline-timed), summed
    comm_s: float = 0.0           # TP collectives + EP dispatch / combine, summed
    overlap_saved_s: float = 0.0  # microbatch pipelining gain (negative = it costs)
    flops: float = 0.0            # per device
    hbm_bytes: float = 0.0        # per device
    memory_bound_s: float = 0.0   # of compute_s, the ops limited by HBM bandwidth

    @property
    def bound(self) -> str:
        if self.comm_s > self.compute_s:
            return "communication"
        return "memory" if self.memory_bound_s > self.compute_s / 2 else "compute"


@dataclass
class MemoryUse:
    """Bytes per device."""
    weights: float
    kv_cache: float
    activations: float
    reserved: float
    limit: float

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.activations + self.reserved

    @property
    def fits(self) -> bool:
        return self.total <= self.limit


# --------------------------------------------------------------------------- model quantities

def layer_kinds(s: ModelShape, mtp: bool = False) -> list[str]:
    """'dense' / 'moe' per decoder layer, plus the MTP layers when speculative decoding uses them."""
    kinds = ["moe" if s.is_moe_layer(i) else "dense" for i in range(s.num_layers)]
    if mtp:
        kinds += ["moe" if s.is_moe else "dense"] * s.num_mtp_layers
    return kinds


def kv_values_per_token_layer(s: ModelShape, tp: int = 1) -> float:
    """Cached values per token per layer held by ONE device of a TP group.

    MLA caches the compressed latent + the shared rope key (kv_lora + rope); every TP rank needs all
    of it (it is shared by all heads), so TP does not shrink it. GQA caches K and V of its KV heads,
    split over TP (replicated once TP exceeds the KV-head count)."""
    if s.attention == "mla":
        return float(s.kv_lora_dim + s.qk_rope_dim)
    return 2.0 * _kv_heads_per_device(s, tp) * s.head_dim


def kv_bytes_per_token(s: ModelShape, prec: Precision, mtp: bool = False) -> float:
    """KV-cache bytes of one token of one request across all layers (the logical cache, TP = 1)."""
    return kv_values_per_token_layer(s, 1) * prec.kv_bytes * len(layer_kinds(s, mtp))


def kv_bytes_per_request(s: ModelShape, prec: Precision, context: int, mtp: bool = False) -> float:
    return kv_bytes_per_token(s, prec, mtp) * context


def _kv_heads_per_device(s: ModelShape, tp: int) -> float:
    return s.num_kv_heads / tp if tp <= s.num_kv_heads else 1.0


def _attn_params(s: ModelShape, tp: int) -> tuple[float, float]:
    """(replicated, TP-sharded) projection parameters of one attention layer on one device."""
    H, N = s.hidden_size, s.num_heads
    if s.attention == "mla":
        rep = H * s.q_lora_dim + H * (s.kv_lora_dim + s.qk_rope_dim)         # q_a, kv_a (MQA part)
        shard = (s.q_lora_dim * N * s.head_dim + s.kv_lora_dim * N * (s.qk_nope_dim + s.v_head_dim)
                 + N * s.v_head_dim * H) / tp                                   # q_b, kv_b, o
        return float(rep), shard
    kvh = _kv_heads_per_device(s, tp)
    return 0.0, H * (N / tp) * s.head_dim + 2 * H * kvh * s.head_dim + (N / tp) * s.v_head_dim * H


def experts_per_device(s: ModelShape, devices: int) -> int:
    """Expert slots per device: ceil(E / N); one (a redundant copy) when N > E."""
    return max(1, math.ceil(s.num_experts / devices)) if s.is_moe else 0


def weight_bytes(s: ModelShape, inst: Instance, prec: Precision, mtp: bool = False) -> dict:
    """Resident weight bytes per device by component (embedding and lm_head 16-bit, vocab-sharded)."""
    H, t, wb = s.hidden_size, inst.tp, prec.weight_bytes
    rep, shard = _attn_params(s, t)
    kinds = layer_kinds(s, mtp)
    out = dict(attention=len(kinds) * (rep + shard) * wb, dense_ffn=0.0, shared_experts=0.0,
               routed_experts=0.0, router=0.0)
    for k in kinds:
        if k == "dense":
            out["dense_ffn"] += 3 * H * s.dense_ffn / t * wb
        else:
            out["router"] += H * s.num_experts * HALF
            out["routed_experts"] += experts_per_device(s, inst.devices) * 3 * H * s.moe_ffn * wb
            out["shared_experts"] += 3 * H * s.shared_ffn / t * wb
    vocab = s.vocab_size * H / t * HALF
    out["embedding_head"] = vocab * (1 if s.tie_word_embeddings else 2)
    if mtp:
        out["mtp_extra"] = s.num_mtp_layers * 2 * H * H * wb
    return out


# --------------------------------------------------------------------------- per-op timing

class _Timer:
    """Roofline timing of a device's ops; collects the breakdown."""

    def __init__(self, hw: Hardware, prec: Precision, inst: Instance):
        self.hw, self.prec, self.inst = hw, prec, inst
        self.F16 = hw.peak_tflops * 1e12 * hw.matmul_efficiency
        int8 = hw.peak_int8_tops if prec.weights == "int8" and hw.peak_int8_tops > 0 else hw.peak_tflops
        self.Fmm = int8 * 1e12 * hw.matmul_efficiency      # projections / FFN / experts
        self.B = hw.hbm_bandwidth_gbs * 1e9 * hw.bandwidth_efficiency
        self.compute: dict = {}
        self.comm: dict = {}
        self.flops = self.bytes = self.mem_bound = 0.0

    def op(self, name: str, flops: float, nbytes: float, sixteen_bit: bool = False, times: float = 1.0):
        F = self.F16 if sixteen_bit else self.Fmm
        tc, tm = flops / F, nbytes / self.B
        t = max(tc, tm) * times
        self.compute[name] = self.compute.get(name, 0.0) + t
        self.flops += flops * times
        self.bytes += nbytes * times
        if tm > tc:
            self.mem_bound += t

    def link(self, name: str, seconds: float, times: float = 1.0):
        self.comm[name] = self.comm.get(name, 0.0) + seconds * times

    def ring_allreduce(self, nbytes: float, group: int) -> float:
        if group <= 1:
            return 0.0
        hw = self.hw
        bw, lat = _link(hw, group)
        return 2 * (group - 1) / group * nbytes / bw + 2 * (group - 1) * lat

    def alltoall(self, nbytes: float, combine: bool) -> float:
        """One EP dispatch (or combine) of `nbytes` leaving this device."""
        N, hw = self.inst.devices, self.hw
        if N <= 1:
            return 0.0
        measured = hw.ep_combine_bandwidth_gbs if combine else hw.ep_dispatch_bandwidth_gbs
        bw, lat = _link(hw, N)
        if measured > 0 and N <= hw.supernode_devices:
            bw = measured * 1e9                     # measured per-rank figure: no efficiency on top
        if N > hw.supernode_devices:                # leaves the scale-up domain over RoCE
            remote = 1 - hw.supernode_devices / N
            bw_in = (measured * 1e9 if measured > 0 else hw.supernode_bandwidth_gbs * 1e9 * hw.bandwidth_efficiency)
            return max(nbytes * remote / bw, nbytes * (1 - remote) / bw_in) + lat
        return nbytes / bw + lat


def _link(hw: Hardware, group: int) -> tuple[float, float]:
    """(bandwidth B/s, latency s) of the slowest link of a contiguous group of devices."""
    eff = hw.bandwidth_efficiency
    if group <= hw.devices_per_node:
        return hw.intra_node_bandwidth_gbs * 1e9 * eff, hw.intra_node_latency_us * 1e-6
    if group <= hw.supernode_devices:
        return hw.supernode_bandwidth_gbs * 1e9 * eff, hw.intra_node_latency_us * 1e-6
    return hw.inter_node_bandwidth_gbs * 1e9 * eff, hw.inter_node_latency_us * 1e-6


def _layer(tm: _Timer, s: ModelShape, kind: str, n: float, attended: float, kv_read_tokens: float,
           decode: bool, times: float):
    """One decoder layer on one device: n tokens in the TP group, `attended` = sum over the n query
    tokens of the positions each attends to, `kv_read_tokens` cached tokens read from HBM (every
    sequence's cache once: the query tokens of a sequence share the read)."""
    prec, inst = tm.prec, tm.inst
    H, N, t, wb = s.hidden_size, s.num_heads, inst.tp, prec.weight_bytes
    rep, shard = _attn_params(s, t)
    tm.op("attention_proj", 2 * n * (rep + shard), (rep + shard) * wb + 2 * n * H * HALF, times=times)
    if s.attention == "mla" and decode:      # absorbed: attend over the latent (+ rope), value = latent
        core = 2 * attended * (N / t) * ((s.kv_lora_dim + s.qk_rope_dim) + s.kv_lora_dim)
    elif s.attention == "mla":               # prefill: decompressed K (nope + rope) and V per head
        core = 2 * attended * (N / t) * (s.head_dim + s.v_head_dim)
    else:
        core = 2 * attended * (N / t) * (s.head_dim + s.v_head_dim)
    kv = kv_values_per_token_layer(s, t) * prec.kv_bytes
    tm.op("attention_core", core, (kv_read_tokens + n) * kv, sixteen_bit=True, times=times)   # read + write
    tm.link("tp_allreduce", tm.ring_allreduce(n * H * HALF, t), times)
    if kind == "dense":
        p = 3 * H * s.dense_ffn / t
        tm.op("dense_ffn", 2 * n * p, p * wb, times=times)
        tm.link("tp_allreduce", tm.ring_allreduce(n * H * HALF, t), times)
        return
    E, K, F = s.num_experts, s.top_k, s.moe_ffn
    T = n / t                                            # tokens this device routes
    tm.op("router", 2 * T * H * E, H * E * HALF, sixteen_bit=True, times=times)
    leave = (1 - 1 / inst.devices)
    tm.link("ep_dispatch", tm.alltoall(T * K * H * prec.dispatch_bytes * leave, combine=False), times)
    slots = experts_per_device(s, inst.devices)
    recv = T * K                                         # copies this device computes (perfect balance)
    active = slots * (1 - (1 - 1 / slots) ** recv) if slots > 1 else (1.0 if recv > 0 else 0.0)
    tm.op("routed_experts", 2 * recv * 3 * H * F, active * 3 * H * F * wb + 2 * recv * H * HALF, times=times)
    tm.link("ep_combine", tm.alltoall(T * K * H * HALF * leave, combine=True), times)
    if s.shared_ffn:
        p = 3 * H * s.shared_ffn / t
        tm.op("shared_experts", 2 * n * p, p * wb, times=times)
        tm.link("tp_allreduce", tm.ring_allreduce(n * H * HALF, t), times)


def _head(tm: _Timer, s: ModelShape, tokens: float, times: float = 1.0):
    V, H, t = s.vocab_size, s.hidden_size, tm.inst.tp
    tm.op("lm_head", 2 * tokens * H * V / t, H * V / t * HALF + tokens * V / t * 4, sixteen_bit=True,
          times=times)


def _forward(s: ModelShape, hw: Hardware, inst: Instance, prec: Precision, *, n: float, seqs: float,
             attended: float, kv_read_tokens: float, decode: bool, head_tokens: float, mtp: bool,
             microbatches: int) -> StepCost:
    """Time one forward; `microbatches` = 2 splits the batch in halves on two streams."""
    if microbatches not in (1, 2):
        raise ValueError(f"microbatches: {microbatches}; use 1 or 2")
    m = microbatches
    kinds = layer_kinds(s, mtp)
    per_kind = {}
    for kind in dict.fromkeys(kinds):       # layers of one kind cost the same: time one, count them
        tm = _Timer(hw, prec, inst)
        _layer(tm, s, kind, n / m, attended / m, kv_read_tokens / m, decode, times=m)
        per_kind[kind] = tm
    tail = _Timer(hw, prec, inst)
    _head(tail, s, head_tokens)
    if mtp and s.num_mtp_layers:
        H = s.hidden_size
        tail.op("mtp_extra", 2 * seqs * 2 * H * H, 2 * H * H * prec.weight_bytes)
        _head(tail, s, seqs, times=s.num_mtp_layers)     # draft logits of the MTP module
    breakdown: dict = {}
    total = compute = comm = flops = nbytes = mem_bound = serial = 0.0
    for tm, count in [(per_kind[k], kinds.count(k)) for k in per_kind] + [(tail, 1)]:
        c, x = sum(tm.compute.values()), sum(tm.comm.values())
        for k, v in list(tm.compute.items()) + list(tm.comm.items()):
            breakdown[k] = breakdown.get(k, 0.0) + count * v
        compute, comm = compute + count * c, comm + count * x
        flops, nbytes = flops + count * tm.flops, nbytes + count * tm.bytes
        mem_bound += count * tm.mem_bound
        serial += count * (c + x)
        total += count * (max(c, x) if m == 2 else c + x)
    if m == 2:   # pipeline fill: the first layer's half-batch communication cannot hide
        first = per_kind[kinds[0]] if kinds else tail
        total += min(sum(first.compute.values()), sum(first.comm.values())) / 2
    return StepCost(seconds=total, breakdown=breakdown, compute_s=compute, comm_s=comm,
                    overlap_saved_s=serial - total if m == 2 else 0.0, flops=flops, hbm_bytes=nbytes,
                    memory_bound_s=mem_bound)


# --------------------------------------------------------------------------- public entry points

def decode_step(s: ModelShape, hw: Hardware, inst: Instance, prec: Precision, batch: int, context: float,
                mtp_accept: float = 0.0, microbatches: int = 1) -> StepCost:
    """One decode step of `batch` sequences per DP-attention group, each attending `context` cached tokens.

    With `mtp_accept` > 0 the main model verifies one MTP draft token per sequence (q = 2 query
    tokens) and the MTP layer drafts the next; the step yields 1 + mtp_accept tokens per sequence."""
    _check_mtp(s, mtp_accept)
    q = 2 if mtp_accept > 0 else 1
    n = batch * q
    return _forward(s, hw, inst, prec, n=n, seqs=batch, attended=n * context, kv_read_tokens=batch * context,
                    decode=True, head_tokens=n, mtp=mtp_accept > 0, microbatches=microbatches)


def tpot(step: StepCost, mtp_accept: float = 0.0) -> float:
    """Seconds per output token of one sequence: the step time over the tokens a step yields."""
    return step.seconds / (1 + mtp_accept)


def prefill_batch(s: ModelShape, hw: Hardware, inst: Instance, prec: Precision, seqs: int, prompt: int,
                  cached: int = 0, mtp: bool = False, microbatches: int = 1) -> StepCost:
    """Prefill of `seqs` prompts of `prompt` tokens per DP-attention group, the first `cached` tokens
    of each coming from a prefix cache (their KV is read, not recomputed)."""
    if not 0 <= cached < prompt:
        raise ValueError(f"prefix: {cached} cached tokens of a {prompt}-token prompt; use 0 <= cached < prompt")
    new = prompt - cached
    return prefill_packed(s, hw, inst, prec, new_tokens=inst.dp * seqs * new,
                          attended=inst.dp * seqs * prefill_attended(new, cached),
                          cached_tokens=inst.dp * seqs * cached,
                          seqs=inst.dp * seqs, mtp=mtp, microbatches=microbatches)


def prefill_attended(new: float, cached: float) -> float:
    """Causal attention work of one prompt: token i of the `new` ones attends cached + i keys."""
    return new * (cached + (new + 1) / 2)


def prefill_packed(s: ModelShape, hw: Hardware, inst: Instance, prec: Precision, *, new_tokens: float,
                   attended: float, cached_tokens: float, seqs: float, mtp: bool = False,
                   microbatches: int = 1) -> StepCost:
    """Prefill of a packed batch of mixed prompts over a whole instance: totals of new tokens, of
    `prefill_attended` per prompt, of cached prefix tokens and of prompts, spread evenly over the
    DP-attention groups (an engine packs prompts so that the groups stay balanced)."""
    d = inst.dp
    return _forward(s, hw, inst, prec, n=new_tokens / d, seqs=seqs / d, attended=attended / d,
                    kv_read_tokens=cached_tokens / d, decode=False, head_tokens=seqs / d, mtp=mtp,
                    microbatches=microbatches)


def memory(s: ModelShape, hw: Hardware, inst: Instance, prec: Precision, *, sequences: float,
           context: float, mtp: bool = False, tokens_in_flight: float = 0.0) -> MemoryUse:
    """Per-device memory: resident weights, the KV cache of `sequences` sequences per DP group at
    `context` tokens each, the activations of `tokens_in_flight` tokens per DP group, and the
    profile's reserved bytes (runtime, HCCL / all-to-all buffers, workspace)."""
    w = sum(weight_bytes(s, inst, prec, mtp).values())
    kv = sequences * context * kv_values_per_token_layer(s, inst.tp) * prec.kv_bytes * len(layer_kinds(s, mtp))
    H, t = s.hidden_size, inst.tp
    widest = max(3 * s.dense_ffn / t if s.num_dense_layers else 0.0,
                 s.top_k * 2 * s.moe_ffn + 3 * s.shared_ffn / t if s.is_moe else 0.0)
    # one layer's working set per token (residual, norms, q/k/v, FFN / expert intermediates, a2a
    # buffers), live only during that layer; plus fp32 logits of the sequences' last tokens
    per_token = HALF * (6 * H + 2 * s.num_heads / t * (s.head_dim + s.v_head_dim) + widest
                        + 2 * (s.top_k * H if s.is_moe else 0))
    act = tokens_in_flight * per_token + sequences * s.vocab_size / t * 4
    return MemoryUse(weights=w, kv_cache=kv, activations=act, reserved=hw.reserved_gb * 1e9,
                     limit=hw.hbm_gb * 1e9)


def max_sequences(s: ModelShape, hw: Hardware, inst: Instance, prec: Precision, context: float,
                  mtp: bool = False, tokens_per_seq: float = 1.0) -> int:
    """Largest number of sequences per DP group whose KV cache (at `context`) fits next to the weights."""
    base = memory(s, hw, inst, prec, sequences=0, context=context, mtp=mtp)
    one = memory(s, hw, inst, prec, sequences=1, context=context, mtp=mtp, tokens_in_flight=tokens_per_seq)
    per = one.total - base.total
    free = base.limit - base.total
    return int(free // per) if free > 0 and per > 0 else 0


def kv_transfer_seconds(s: ModelShape, hw: Hardware, prec: Precision, prompt: int, tp: int, *,
                        mtp: bool = False, block_tokens: int = 0) -> float:
    """P->D KV transfer of one request over the profile's KV link, sent in parallel by the t devices of
    its prefill TP group. `block_tokens` > 0: block-fixed transfer, one RDMA write per block per
    layer (each paying the profile's per-write latency); 0: one contiguous buffer (P/D-Serve)."""
    bw = (hw.kv_transfer_bandwidth_gbs or hw.inter_node_bandwidth_gbs) * 1e9 * hw.bandwidth_efficiency
    nbytes = kv_bytes_per_request(s, prec, prompt, mtp) / tp
    layers = len(layer_kinds(s, mtp))
    lat = hw.rdma_op_latency_us * 1e-6
    ops = layers * math.ceil(prompt / block_tokens) * (1 if s.attention == "mla" else 2) if block_tokens else 1
    ops = math.ceil(ops / tp) if block_tokens else 1
    return nbytes / bw + ops * lat


def _check_mtp(s: ModelShape, accept: float) -> None:
    if not 0 <= accept < 1:
        raise ValueError(f"mtp-accept: {accept}; use an acceptance rate in [0, 1)")
    if accept > 0 and not s.num_mtp_layers:
        raise ValueError(f"mtp-accept: {s.arch} has no MTP layers (num_mtp_layers 0); drop --mtp-accept")


def summary(step: StepCost) -> dict:
    """JSON-able breakdown in milliseconds."""
    return dict(ms=1e3 * step.seconds, compute_ms=1e3 * step.compute_s, comm_ms=1e3 * step.comm_s,
                overlap_saved_ms=1e3 * step.overlap_saved_s, bound=step.bound,
                breakdown_ms={k: 1e3 * v for k, v in sorted(step.breakdown.items())})

