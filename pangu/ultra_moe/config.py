"""Pangu Ultra MoE configuration: dataclass, presets and the analytic parameter counter.

Field names follow the released openPangu-Ultra-MoE `config.json` (see shared MODELS.md), so
`convert.py` maps config keys 1:1. Fields that only matter for training here (init scheme, balance
loss scope, MTP loss weight, implementation switches) have no config.json counterpart and are
dropped on export.

Parameter-count convention (checked in tests against the published 718B total / 39B active):
  total  = every learned weight of the main model (embedding, decoder layers, final norm, lm_head)
           EXCLUDING the MTP module(s) -- the published 718B excludes MTP, like DeepSeek-V3's 671B
           (with the MTP layer the count is 731.5B, 1.9% off; without it 719.09B, +0.15%).
  active = weights used per token: everything above minus the routed experts a token does not
           choose, and minus the input embedding table (a row lookup, not a matmul)
           -> 39.19B (+0.49% vs 39B; counting the embedding too would give 40.37B, +3.5%).
  `e_score_correction_bias` (a non-learned selection buffer) is not counted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from pangu.shape import ModelShape

AUX_LOSS_SCOPES = ("micro_batch", "ep_group", "global")


@dataclass
class PanguUltraMoEConfig:
    """Pangu Ultra MoE (MLA + DSSN + sigmoid top-k MoE + MTP); defaults are the full 718B model."""

    vocab_size: int = 153600  # tokenizer vocabulary size
    hidden_size: int = 7680  # model width H
    num_hidden_layers: int = 61  # decoder layers L (MTP layers come on top of these)
    num_attention_heads: int = 128  # MLA query/key/value heads
    attention_q_lora_dim: int = 1536  # rank of the query compression q_a_proj
    attention_kv_lora_dim: int = 512  # rank of the joint key/value compression c_kv
    attention_qk_dim: int = 128  # per-head query/key dims WITHOUT rope ("qk_nope_head_dim")
    attention_qk_rope_dim: int = 64  # per-head rope dims of q and of the shared rope key
    attention_v_dim: int = 128  # per-head value dims
    intermediate_size: int = 18432  # SwiGLU width of the dense (first num_dense_layers) layers
    moe_intermediate_size: int = 2048  # SwiGLU width of each routed and shared expert
    num_routed_experts: int = 256  # routed experts per MoE layer
    num_experts_per_tok: int = 8  # routed experts chosen per token (top-k)
    num_shared_experts: int = 1  # always-on ungated shared experts (stored as one MLP)
    num_dense_layers: int = 3  # the first layers use a dense SwiGLU instead of MoE
    num_mtp_layers: int = 1  # multi-token-prediction modules (depth d predicts token t+1+d)
    routed_scaling_factor: float = 2.5  # multiplies the (renormalised) routing weights
    norm_topk_prob: bool = True  # renormalise the top-k sigmoid scores to sum 1
    n_group: int = 1  # DeepSeek-V3 group-limited routing: the experts form n_group contiguous groups
    topk_group: int = 1  # ... and only the experts of the topk_group best groups are candidates
    router_enable_expert_bias: bool = True  # e_score_correction_bias: added for selection only
    router_bias_update_rate: float = 0.0  # aux-loss-free bias step gamma (0: bias stays fixed)
    router_aux_loss_coef: float = 0.01  # alpha of the balance loss alpha * sum_i f_i p_i
    aux_loss_scope: Literal["micro_batch", "ep_group", "global"] = "ep_group"  # where f_i, p_i are aggregated
    mtp_loss_weight: float = 0.3  # lambda: total += lambda * mean over depths of the MTP losses
    rms_norm_eps: float = 1e-5  # epsilon of every RMSNorm
    rope_theta: float = 2.56e7  # RoPE base, applied to the rope dims only (interleaved pairs)
    max_position_embeddings: int = 131072  # longest position the released model serves (config.json)
    sandwich_norm: bool = True  # DSSN: pre- AND post-norm around each sub-layer (False: pre-norm)
    sandwich_norm_c_attn: float = 0.283  # DSSN: attention post-norm gamma init = c_attn / sqrt(L)
    sandwich_norm_c_mlp: float = 0.432  # DSSN: MLP post-norm gamma init = c_mlp / sqrt(L)
    tiny_init: bool = True  # TinyInit: weights ~ N(0, sqrt(1/(2 H L))), embedding N(0, 0.5)
    tiny_init_embedding_std: float = 0.5  # TinyInit embedding std
    initializer_range: float = 0.02  # std of every weight when tiny_init is False
    tie_word_embeddings: bool = False  # share embed_tokens and lm_head (the release does not)
    compute_dtype: Literal["float32", "bfloat16"] = "float32"  # matmul dtype; params stay fp32
    attention_impl: str = "auto"  # ops.attention impl: auto | reference | fast | ascend
    rope_impl: str = "auto"  # ops.rope impl: auto | reference | fast | ascend
    ops_impl: str = "auto"  # default impl of every op whose own *_impl is "auto" (norm, rope, swiglu, MoE, attention)
    expert_impl: Literal["grouped", "batched", "loop"] = "grouped"  # MoE experts: grouped (fastest), batched or reference loop

    @property
    def qk_head_dim(self) -> int:
        """Per-head query/key width (nope + rope) = 192 in the full model."""
        return self.attention_qk_dim + self.attention_qk_rope_dim

    @property
    def num_moe_layers(self) -> int:
        return self.num_hidden_layers - self.num_dense_layers

    def validate(self) -> "PanguUltraMoEConfig":
        """Raise ValueError("<field>: <problem>; <fix>") for an inconsistent config."""
        positive = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "attention_q_lora_dim", "attention_kv_lora_dim", "attention_qk_dim",
                    "attention_qk_rope_dim", "attention_v_dim", "intermediate_size",
                    "moe_intermediate_size", "num_routed_experts", "num_experts_per_tok",
                    "max_position_embeddings")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}; set a positive integer")
        for name in ("num_shared_experts", "num_dense_layers", "num_mtp_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}; use 0 to disable")
        if self.attention_qk_rope_dim % 2:
            raise ValueError(f"attention_qk_rope_dim: {self.attention_qk_rope_dim} is odd; "
                             "RoPE rotates pairs, use an even number")
        if self.num_dense_layers > self.num_hidden_layers:
            raise ValueError(f"num_dense_layers: {self.num_dense_layers} > num_hidden_layers "
                             f"{self.num_hidden_layers}; use at most num_hidden_layers")
        if self.num_experts_per_tok > self.num_routed_experts:
            raise ValueError(f"num_experts_per_tok: {self.num_experts_per_tok} > num_routed_experts "
                             f"{self.num_routed_experts}; choose at most num_routed_experts")
        if self.n_group < 1 or self.num_routed_experts % self.n_group:
            raise ValueError(f"n_group: {self.n_group} does not divide num_routed_experts {self.num_routed_experts}; "
                             "use a divisor (1 = no group limit)")
        if not 1 <= self.topk_group <= self.n_group:
            raise ValueError(f"topk_group: {self.topk_group} must be in [1, n_group={self.n_group}]; "
                             "use n_group for no limit")
        if self.num_experts_per_tok > self.topk_group * (self.num_routed_experts // self.n_group):
            raise ValueError(f"num_experts_per_tok: {self.num_experts_per_tok} experts do not fit in topk_group "
                             f"{self.topk_group} groups of {self.num_routed_experts // self.n_group}; raise topk_group")
        if self.num_shared_experts > 1:
            raise ValueError(f"num_shared_experts: {self.num_shared_experts} is not supported; "
                             "use 0 or 1 (several shared experts are one wider MLP: raise "
                             "moe_intermediate_size of the shared expert instead)")
        if self.aux_loss_scope not in AUX_LOSS_SCOPES:
            raise ValueError(f"aux_loss_scope: unknown value {self.aux_loss_scope!r}; "
                             f"use one of {AUX_LOSS_SCOPES}")
        for name in ("routed_scaling_factor", "rms_norm_eps", "rope_theta", "initializer_range",
                     "tiny_init_embedding_std", "sandwich_norm_c_attn", "sandwich_norm_c_mlp"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}; set a positive value")
        for name in ("router_bias_update_rate", "router_aux_loss_coef", "mtp_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}; use 0 to disable")
        if self.router_bias_update_rate > 0 and not self.router_enable_expert_bias:
            raise ValueError("router_bias_update_rate: > 0 needs the expert bias; set "
                             "router_enable_expert_bias: true or router_bias_update_rate: 0")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype: unknown value {self.compute_dtype!r}; use float32 or bfloat16")
        if self.expert_impl not in ("grouped", "batched", "loop"):
            raise ValueError(f"expert_impl: unknown value {self.expert_impl!r}; use grouped, batched or loop")
        for name in ("attention_impl", "rope_impl", "ops_impl"):
            if getattr(self, name) not in ("auto", "reference", "fast", "ascend"):
                raise ValueError(f"{name}: unknown value {getattr(self, name)!r}; "
                                 "use auto, reference, fast or ascend")
        return self

    def replace(self, **kw) -> "PanguUltraMoEConfig":
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **kw).validate()


def tiny() -> PanguUltraMoEConfig:
    """Seconds-scale CPU model: 1 dense + 2 MoE layers, 8 experts top-2, 1 MTP layer."""
    return PanguUltraMoEConfig(
        vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        attention_q_lora_dim=32, attention_kv_lora_dim=16, attention_qk_dim=16,
        attention_qk_rope_dim=8, attention_v_dim=16, intermediate_size=128,
        moe_intermediate_size=32, num_routed_experts=8, num_experts_per_tok=2,
        num_shared_experts=1, num_dense_layers=1, num_mtp_layers=1,
        max_position_embeddings=4096).validate()


def bench() -> PanguUltraMoEConfig:
    """Benchmark size (run at seq >= 512): hidden 512, 4 layers (1 dense), 16 experts top-4."""
    return PanguUltraMoEConfig(
        vocab_size=32000, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
        attention_q_lora_dim=192, attention_kv_lora_dim=64, attention_qk_dim=32,
        attention_qk_rope_dim=16, attention_v_dim=32, intermediate_size=1536,
        moe_intermediate_size=256, num_routed_experts=16, num_experts_per_tok=4,
        num_shared_experts=1, num_dense_layers=1, num_mtp_layers=1,
        max_position_embeddings=8192).validate()


def full() -> PanguUltraMoEConfig:
    """The published 718B-total / 39B-active Pangu Ultra MoE."""
    return PanguUltraMoEConfig().validate()


PRESETS = {"tiny": tiny, "bench": bench, "full": full}

# Published figures and the tolerance the preset must meet (see module docstring for convention).
PUBLISHED_TOTAL = 718e9
PUBLISHED_ACTIVE = 39e9
PUBLISHED_TOLERANCE = 0.01


def _mla_params(c: PanguUltraMoEConfig) -> int:
    h, n = c.hidden_size, c.num_attention_heads
    return (h * c.attention_q_lora_dim + c.attention_q_lora_dim                       # q_a + norm
            + c.attention_q_lora_dim * n * c.qk_head_dim                              # q_b
            + h * (c.attention_kv_lora_dim + c.attention_qk_rope_dim)                 # kv_a (+ k_rope)
            + c.attention_kv_lora_dim                                                 # kv_a norm
            + c.attention_kv_lora_dim * n * (c.attention_qk_dim + c.attention_v_dim)  # kv_b
            + n * c.attention_v_dim * h)                                              # o_proj


def _swiglu(h: int, f: int) -> int:
    return 3 * h * f


def _layer_params(c: PanguUltraMoEConfig, moe: bool) -> tuple[int, int]:
    """(total, active) of one decoder layer."""
    h = c.hidden_size
    norms = (4 if c.sandwich_norm else 2) * h
    base = _mla_params(c) + norms
    if not moe:
        dense = _swiglu(h, c.intermediate_size)
        return base + dense, base + dense
    expert = _swiglu(h, c.moe_intermediate_size)
    shared = c.num_shared_experts * expert
    gate = c.num_routed_experts * h
    total = base + gate + shared + c.num_routed_experts * expert
    active = base + gate + shared + c.num_experts_per_tok * expert
    return total, active


def _mtp_module_params(c: PanguUltraMoEConfig) -> tuple[int, int]:
    """enorm + hnorm + eh_proj + shared_head.norm + one (MoE) decoder layer; embed/head shared."""
    h = c.hidden_size
    own = 3 * h + 2 * h * h
    t, a = _layer_params(c, moe=c.num_dense_layers < c.num_hidden_layers)
    return own + t, own + a


def count_parameters(config: PanguUltraMoEConfig, include_mtp: bool = False) -> tuple[int, int]:
    """Analytic (total, active) parameter counts; convention in the module docstring.

    include_mtp=True adds the MTP modules, which is what an instantiated model holds.
    """
    c = config
    h = c.hidden_size
    dt, da = _layer_params(c, moe=False)
    mt, ma = _layer_params(c, moe=True)
    nd, nm = c.num_dense_layers, c.num_moe_layers
    embed = c.vocab_size * h
    head = 0 if c.tie_word_embeddings else c.vocab_size * h
    total = embed + head + h + nd * dt + nm * mt
    # Active: the embedding table is a lookup; with tied weights the head matmul still uses it.
    active = (embed if c.tie_word_embeddings else head) + h + nd * da + nm * ma
    if include_mtp:
        t, a = _mtp_module_params(c)
        total += c.num_mtp_layers * t
        active += c.num_mtp_layers * a
    return total, active


def model_shape(c: PanguUltraMoEConfig) -> ModelShape:
    """The planner's view: MLA, the first num_dense_layers dense, sigmoid top-k MoE, MTP layers."""
    return ModelShape(
        arch="pangu_ultra_moe", vocab_size=c.vocab_size, hidden_size=c.hidden_size,
        num_layers=c.num_hidden_layers, num_heads=c.num_attention_heads, num_kv_heads=c.num_attention_heads,
        head_dim=c.qk_head_dim, v_head_dim=c.attention_v_dim, attention="mla",
        q_lora_dim=c.attention_q_lora_dim, kv_lora_dim=c.attention_kv_lora_dim,
        qk_nope_dim=c.attention_qk_dim, qk_rope_dim=c.attention_qk_rope_dim,
        num_experts=c.num_routed_experts, num_expert_groups=1, top_k=c.num_experts_per_tok,
        moe_ffn=c.moe_intermediate_size, shared_ffn=c.num_shared_experts * c.moe_intermediate_size,
        dense_ffn=c.intermediate_size, num_dense_layers=c.num_dense_layers, num_mtp_layers=c.num_mtp_layers,
        expert_bias=c.router_enable_expert_bias, sandwich_norm=c.sandwich_norm,
        tie_word_embeddings=c.tie_word_embeddings)
