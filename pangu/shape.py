"""ModelShape: the dimensions of a network that planners and FLOP counters need, and model FLOPs.

Each architecture's spec builds its ModelShape from its own config by field name
(`ModelSpec.shape(cfg)`, e.g. `pangu.pro_moe.config.model_shape`); nothing here guesses an
architecture. The parallel planner (parallel_strategies) times GEMMs and collectives from it, the
benchmark (`make bench`) computes MFU from `train_flops`, and the serving planner sizes KV caches.

FLOP convention (docs/benchmarks.md): training = 3 x forward (backward = 2 x forward); forward =
2 x (matmul weights a token touches: attention projections, router, the K routed experts, shared
experts, dense MLPs, lm_head, MTP modules) per token + causal attention 2 x B x N x S(S+1)/2 x
(Dqk + Dv) (only the unmasked half of the score matrix is useful work). Embedding lookups, norms,
softmax and the optimiser are not counted (standard "model FLOPs").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class VisionShape:
    """ViT tower + patch merger of a Qwen2.5-VL-style VLM (MindVL)."""
    depth: int                 # ViT blocks
    hidden_size: int           # ViT width C
    intermediate_size: int     # ViT SwiGLU width
    num_heads: int             # ViT attention heads
    patch_size: int = 14       # spatial patch
    temporal_patch_size: int = 2
    in_channels: int = 3
    spatial_merge_size: int = 2
    out_hidden_size: int = 0   # LLM hidden the merger projects to
    window_size: int = 112     # window side in pixels (8x8 patches)
    fullatt_block_indexes: tuple = ()

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2


@dataclass(frozen=True)
class ModelShape:
    """Everything the planner needs to know about a decoder-only LM (optionally with a ViT)."""
    arch: str                  # the spec's name
    vocab_size: int
    hidden_size: int
    num_layers: int            # decoder layers, MTP excluded
    num_heads: int
    num_kv_heads: int
    head_dim: int              # GQA head dim (= qk dim); for MLA qk_nope + qk_rope
    v_head_dim: int
    attention: str = "gqa"     # "gqa" | "mla"
    qkv_bias: bool = False
    o_bias: bool = False
    q_lora_dim: int = 0        # MLA only
    kv_lora_dim: int = 0
    qk_nope_dim: int = 0
    qk_rope_dim: int = 0
    num_experts: int = 0       # routed experts (0 = dense model)
    num_expert_groups: int = 1 # MoGE groups (1 = plain top-k)
    top_k: int = 0
    moe_ffn: int = 0           # routed expert intermediate size
    shared_ffn: int = 0        # total shared-expert intermediate size (0 = none)
    dense_ffn: int = 0         # intermediate size of dense layers
    num_dense_layers: int = 0  # leading dense layers (all layers if num_experts == 0)
    num_mtp_layers: int = 0
    router_scale: bool = False # Pro's learned per-expert scale [1, E]
    expert_bias: bool = False  # Ultra's selection-only bias [E]
    sandwich_norm: bool = False
    tie_word_embeddings: bool = False
    vision: Optional[VisionShape] = None

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def is_moe_layer(self, i: int) -> bool:
        """Decoder layer i (MTP layers i >= num_layers are built like the last decoder layer)."""
        return self.is_moe and min(i, self.num_layers - 1) >= self.num_dense_layers

    # ---------------------------------------------------------------------------------- FLOPs
    def attention_weights(self) -> int:
        """Matmul weights of one attention block (projections only)."""
        h, n = self.hidden_size, self.num_heads
        if self.attention == "mla":
            return (h * self.q_lora_dim + self.q_lora_dim * n * self.head_dim
                    + h * (self.kv_lora_dim + self.qk_rope_dim)
                    + self.kv_lora_dim * n * (self.qk_nope_dim + self.v_head_dim) + n * self.v_head_dim * h)
        return h * n * self.head_dim + 2 * h * self.num_kv_heads * self.head_dim + n * self.v_head_dim * h

    def mlp_weights(self, moe: bool) -> int:
        """Matmul weights one token touches in an MLP sub-layer (router + K experts + shared, or dense)."""
        h = self.hidden_size
        if moe:
            return self.num_experts * h + self.top_k * 3 * h * self.moe_ffn + 3 * h * self.shared_ffn
        return 3 * h * self.dense_ffn

    def train_flops(self, batch: int, seq: int, vision_stats: dict | None = None) -> dict:
        """Model FLOPs of one training step (3 x forward) on `batch` rows of `seq` tokens, by component.

        With a vision tower, `vision_stats` (mean per step: real `patches`, `window_pairs`,
        `image_pairs`; see recipes.tools.bench.vision_step_stats) adds the ViT on the real patches."""
        h, t = self.hidden_size, batch * seq
        causal_pairs = batch * seq * (seq + 1) / 2  # (query, key) pairs per head under the causal mask
        proj = self.attention_weights()
        per_layer = [proj + self.mlp_weights(self.is_moe_layer(i)) for i in range(self.num_layers)]
        # an MTP module: eh_proj [H, 2H] + one decoder layer built like the last one
        per_layer += [2 * h * h + proj + self.mlp_weights(self.is_moe_layer(self.num_layers))] * self.num_mtp_layers
        layers = self.num_layers + self.num_mtp_layers
        attn = layers * 2 * self.num_heads * causal_pairs * (self.head_dim + self.v_head_dim)
        head = self.vocab_size * h * (1 + self.num_mtp_layers)   # MTP depths reuse the lm_head
        fwd = {"layers_matmul": 2 * t * sum(per_layer), "attention": attn, "lm_head": 2 * t * head}
        out = {k: 3 * float(x) for k, x in fwd.items()}
        if self.vision is not None and vision_stats is not None:
            out.update(vision_train_flops(self.vision, h, vision_stats))
        out["total"] = sum(out.values())
        return out


def vision_train_flops(v: VisionShape, out_hidden: int, stats: dict) -> dict:
    """Training FLOPs (3 x forward) of the ViT + merger: per real patch the patch embedding and each
    block's qkv / proj / SwiGLU matmuls, per merged token the merger MLP; attention 2 x pairs x
    (Dqk + Dv) per head summed = 4 x pairs x C per block (non-causal: every pair in a window/image)."""
    c, i = v.hidden_size, v.intermediate_size
    c4 = c * v.spatial_merge_size ** 2
    full = len(v.fullatt_block_indexes)
    per_patch = v.patch_dim * c + v.depth * (4 * c * c + 3 * c * i)
    merger = (c4 * c4 + c4 * out_hidden) * stats["patches"] / v.spatial_merge_size ** 2
    attn = 4 * c * ((v.depth - full) * stats["window_pairs"] + full * stats["image_pairs"])
    return {"vision_matmul": 3 * 2 * (per_patch * stats["patches"] + merger), "vision_attention": 3 * attn}
