"""Qwen2 (dense) configuration: dataclass (field names follow the released `Qwen2Config` config.json),
presets, the analytic parameter count and the planner's ModelShape.

The dense decoder of the Qwen2.5-VL layout (../shared/MODELS.md): pre-norm RMSNorm, GQA with biases on
q/k/v (not o), SwiGLU MLP without biases, RoPE (rotate-half, full head), tied or untied embeddings.
head_dim = hidden_size / num_attention_heads, as Qwen2's loaders compute it.
"""
from dataclasses import asdict, dataclass

from pangu.common.config_utils import check, check_choice, check_positive_ints
from pangu.shape import ModelShape


@dataclass
class Qwen2Config:
    """Qwen2 hyper-parameters (defaults = the language model of Qwen2.5-VL-7B / Qwen2.5-7B)."""

    vocab_size: int = 152064                 # tokenizer vocabulary size (data tokenizer may set it)
    hidden_size: int = 3584                  # model width H
    intermediate_size: int = 18944           # SwiGLU width of every layer
    num_hidden_layers: int = 28              # decoder layers
    num_attention_heads: int = 28            # query heads N (head_dim = H / N)
    num_key_value_heads: int = 4             # GQA key/value heads (N % Nkv == 0)
    rms_norm_eps: float = 1e-6               # RMSNorm epsilon (pre-norm)
    rope_theta: float = 1e6                  # RoPE base, rotate-half layout, full head_dim
    tie_word_embeddings: bool = False        # share embed_tokens with lm_head (Qwen2.5 <= 3B: yes)
    max_position_embeddings: int = 32768     # longest supported sequence
    initializer_range: float = 0.02          # std of the normal weight init
    compute_dtype: str = "float32"           # matmul input dtype "float32" | "bfloat16" (Ascend)
    attention_impl: str = "auto"             # ops.attention impl "auto"|"reference"|"fast"|"ascend"
    ops_impl: str = "auto"                   # default impl of EVERY op (norm, rope, swiglu, attention)
                                             # whose own *_impl is "auto"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self):
        return asdict(self)

    def validate(self):
        """Raise ValueError("<field>: <problem>; <fix>") on the first inconsistent field."""
        check_positive_ints(self, ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads", "num_key_value_heads", "max_position_embeddings"))
        check(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads",
              f"hidden_size={self.hidden_size} is not divisible by {self.num_attention_heads} heads",
              "Qwen2 computes head_dim = hidden_size / num_attention_heads: choose a divisor")
        check(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
              f"num_attention_heads={self.num_attention_heads} is not divisible by "
              f"num_key_value_heads={self.num_key_value_heads}", "choose a divisor of num_attention_heads")
        check(self.head_dim % 2 == 0, "num_attention_heads", f"head_dim {self.head_dim} is odd",
              "RoPE rotates pairs of dims: choose heads so that hidden_size / heads is even")
        check(self.rms_norm_eps > 0, "rms_norm_eps", f"must be > 0, got {self.rms_norm_eps}", "use e.g. 1e-6")
        check(self.rope_theta > 0, "rope_theta", f"must be > 0, got {self.rope_theta}", "use e.g. 1e6")
        check(self.initializer_range > 0, "initializer_range", f"must be > 0, got {self.initializer_range}",
              "use e.g. 0.02")
        check_choice(self, "compute_dtype", ("float32", "bfloat16"))
        check_choice(self, "attention_impl", ("auto", "reference", "fast", "ascend"))
        check_choice(self, "ops_impl", ("auto", "reference", "fast", "ascend"))
        return self


def tiny() -> Qwen2Config:
    """Trains on a laptop CPU in seconds; vocab_size is normally set from the data tokenizer."""
    return Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, rope_theta=1e4, tie_word_embeddings=True,
                       max_position_embeddings=2048)


def bench() -> Qwen2Config:
    """Throughput benchmark size: hidden 512, 4 layers, 8 query / 2 KV heads of 64."""
    return Qwen2Config(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                       num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)


def full() -> Qwen2Config:
    """The language model of Qwen2.5-VL-7B (= Qwen2.5-7B: 7.62B parameters, 6.53B without embeddings)."""
    return Qwen2Config()


def qwen2_5_0_5b() -> Qwen2Config:
    """Qwen2.5-0.5B (0.49B parameters with the tied embedding, 0.36B without)."""
    return Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)


PRESETS = {"tiny": tiny, "bench": bench, "full": full, "0.5b": qwen2_5_0_5b}


def count_parameters(cfg: Qwen2Config):
    """Analytic (total, active); a dense model uses every parameter for every token."""
    h, v, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    attn = h * q + q + 2 * (h * kv + kv) + q * h
    layer = attn + 3 * h * cfg.intermediate_size + 2 * h
    total = v * h * (1 if cfg.tie_word_embeddings else 2) + L * layer + h
    return total, total


def model_shape(cfg: Qwen2Config) -> ModelShape:
    """The planner's view: GQA with q/k/v biases, every layer a dense SwiGLU."""
    return ModelShape(
        arch="qwen2", vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_layers=cfg.num_hidden_layers,
        num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
        v_head_dim=cfg.head_dim, attention="gqa", qkv_bias=True, o_bias=False, dense_ffn=cfg.intermediate_size,
        num_dense_layers=cfg.num_hidden_layers, tie_word_embeddings=cfg.tie_word_embeddings)
