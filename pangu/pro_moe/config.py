"""Pangu Pro MoE (MoGE) configuration: dataclass (field names follow the released config.json),
presets, the analytic parameter count and the planner's ModelShape."""
from dataclasses import dataclass, asdict

from pangu.common.config_utils import check, check_choice, check_positive_ints
from pangu.shape import ModelShape


@dataclass
class PanguProMoEConfig:
    """Pangu Pro MoE hyper-parameters (defaults = published 72B-A16B model)."""

    vocab_size: int = 153376                 # tokenizer vocabulary size (data tokenizer may set it)
    hidden_size: int = 5120                  # model width H
    num_hidden_layers: int = 48              # decoder layers, all MoE
    num_attention_heads: int = 40            # query heads N
    num_key_value_heads: int = 8             # GQA key/value heads (N % Nkv == 0)
    head_dim: int = 128                      # per-head dim (N*head_dim need not equal H)
    rms_norm_eps: float = 1e-5               # RMSNorm epsilon (pre-norm, no sandwich)
    rope_theta: float = 1.6e7                # RoPE base, rotate-half layout, full head_dim
    moe_intermediate_size: int = 1344        # routed expert SwiGLU width
    shared_expert_intermediate_size: int = 5376  # the 4 shared experts fused as one SwiGLU MLP
    num_experts: int = 64                    # routed experts E
    num_experts_per_tok: int = 8             # active experts K = number of MoGE groups
    router_aux_loss_coef: float = 0.001      # alpha of the balance loss alpha * sum f_i p_i
    tie_word_embeddings: bool = False        # share embed_tokens with lm_head (released: no)
    max_position_embeddings: int = 131072    # longest supported sequence
    initializer_range: float = 0.02          # std of the normal weight init
    attention_bias: bool = True              # q/k/v/o projections carry biases (released: yes)
    compute_dtype: str = "float32"           # matmul input dtype "float32" | "bfloat16" (Ascend)
    expert_impl: str = "grouped"             # MoE experts "grouped" (fast) | "batched" | "loop" (ref.)
    attention_impl: str = "auto"             # ops.attention impl "auto"|"reference"|"fast"|"ascend"
    ops_impl: str = "auto"                   # default impl of EVERY op (norm, rope, swiglu, routing,
                                             # permute, attention) whose own *_impl is "auto"

    @property
    def num_groups(self) -> int:
        """MoGE groups G = K (one expert chosen per group; one group per device for EP)."""
        return self.num_experts_per_tok

    def to_dict(self):
        return asdict(self)

    def validate(self):
        """Raise ValueError("<field>: <problem>; <fix>") on the first inconsistent field."""
        check_positive_ints(self, (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "moe_intermediate_size", "num_experts",
            "num_experts_per_tok", "max_position_embeddings"))
        check(isinstance(self.shared_expert_intermediate_size, int)
              and self.shared_expert_intermediate_size >= 0, "shared_expert_intermediate_size",
              f"must be an integer >= 0, got {self.shared_expert_intermediate_size!r}",
              "use 0 for no shared expert")
        check(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
              f"num_attention_heads={self.num_attention_heads} is not divisible by "
              f"num_key_value_heads={self.num_key_value_heads}",
              "choose a divisor of num_attention_heads")
        check(self.head_dim % 2 == 0, "head_dim", f"{self.head_dim} is odd",
              "RoPE rotates pairs of dims: use an even head_dim")
        check(self.num_experts % self.num_experts_per_tok == 0, "num_experts",
              f"{self.num_experts} is not divisible by num_experts_per_tok="
              f"{self.num_experts_per_tok} (MoGE needs equal groups)",
              "use a multiple of num_experts_per_tok")
        check(self.rms_norm_eps > 0, "rms_norm_eps", f"must be > 0, got {self.rms_norm_eps}",
              "use e.g. 1e-5")
        check(self.rope_theta > 0, "rope_theta", f"must be > 0, got {self.rope_theta}",
              "use e.g. 1.6e7")
        check(self.router_aux_loss_coef >= 0, "router_aux_loss_coef",
              f"must be >= 0, got {self.router_aux_loss_coef}", "use 0.001 (published) or 0")
        check(self.initializer_range > 0, "initializer_range",
              f"must be > 0, got {self.initializer_range}", "use e.g. 0.02")
        check_choice(self, "compute_dtype", ("float32", "bfloat16"))
        check_choice(self, "expert_impl", ("grouped", "batched", "loop"))
        check_choice(self, "attention_impl", ("auto", "reference", "fast", "ascend"))
        check_choice(self, "ops_impl", ("auto", "reference", "fast", "ascend"))
        return self


def tiny() -> PanguProMoEConfig:
    """Trains on a laptop CPU in seconds; vocab_size is normally set from the data tokenizer."""
    return PanguProMoEConfig(
        vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rope_theta=1e4, moe_intermediate_size=32,
        shared_expert_intermediate_size=64, num_experts=8, num_experts_per_tok=4,
        max_position_embeddings=2048)


def bench() -> PanguProMoEConfig:
    """Throughput benchmark size: hidden 512, 4 layers, 16 experts in 4 groups, seq >= 512."""
    return PanguProMoEConfig(
        vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, head_dim=64, rope_theta=1e6, moe_intermediate_size=256,
        shared_expert_intermediate_size=512, num_experts=16, num_experts_per_tok=4,
        max_position_embeddings=4096)


def full() -> PanguProMoEConfig:
    """Published Pangu Pro MoE 72B-A16B (71.99B total / 16.50B active)."""
    return PanguProMoEConfig()


PRESETS = {"tiny": tiny, "bench": bench, "full": full}


def count_parameters(cfg: PanguProMoEConfig):
    """Analytic (total, active): active = total minus the routed experts a token does NOT use."""
    h, v, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    attn = h * q + 2 * h * kv + q * h
    if cfg.attention_bias:
        attn += q + 2 * kv + h
    norms = 2 * h
    router = cfg.num_experts * h + cfg.num_experts
    expert = 3 * h * cfg.moe_intermediate_size
    shared = 3 * h * cfg.shared_expert_intermediate_size
    layer = attn + norms + router + cfg.num_experts * expert + shared
    embed = v * h * (1 if cfg.tie_word_embeddings else 2)
    total = embed + L * layer + h
    active = total - L * (cfg.num_experts - cfg.num_experts_per_tok) * expert
    return total, active


def model_shape(cfg: PanguProMoEConfig) -> ModelShape:
    """The planner's view: GQA with biases, every layer MoGE (groups = K), ungated shared expert."""
    return ModelShape(
        arch="pangu_pro_moe", vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        num_layers=cfg.num_hidden_layers, num_heads=cfg.num_attention_heads,
        num_kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, v_head_dim=cfg.head_dim,
        attention="gqa", qkv_bias=cfg.attention_bias, o_bias=cfg.attention_bias,
        num_experts=cfg.num_experts, num_expert_groups=cfg.num_groups, top_k=cfg.num_experts_per_tok,
        moe_ffn=cfg.moe_intermediate_size, shared_ffn=cfg.shared_expert_intermediate_size,
        num_dense_layers=0, router_scale=True, tie_word_embeddings=cfg.tie_word_embeddings)
