"""Qwen2 <-> its serving layout (`Qwen2ForCausalLM`, model_type "qwen2"), and the text half of
Qwen2.5-VL's config.json.

Our parameter names ARE the serving names (`model.embed_tokens`, `model.layers.N.{input_layernorm,
self_attn.{q,k,v}_proj.{weight,bias}, self_attn.o_proj.weight, post_attention_layernorm,
mlp.{gate,up,down}_proj.weight}`, `model.norm`, `lm_head` when untied); Linear weights are [out, in] on
both sides. config.json keys are Qwen2Config's; head_dim is hidden_size / num_attention_heads (a
config whose `head_dim` says otherwise is refused).
"""
from pangu.common.config_utils import ConfigReader
from pangu.qwen2.config import Qwen2Config
from pangu.spec import ServingLayout

# network facts written to config.json under Qwen2Config's own names
_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
         "num_key_value_heads", "rms_norm_eps", "rope_theta", "tie_word_embeddings", "max_position_embeddings",
         "initializer_range")


def to_hf(state: dict, cfg=None) -> dict:
    """Our {name: array} -> serving {name: array} (identical names)."""
    return dict(state)


def from_hf(state: dict, cfg=None) -> dict:
    """Serving {name: array} -> our {name: array} (identical names)."""
    return dict(state)


def text_config(cfg: Qwen2Config) -> dict:
    """The Qwen2 text keys of config.json (Qwen2ForCausalLM's and the top level of Qwen2.5-VL's)."""
    d = {k: getattr(cfg, k) for k in _KEYS}
    # sliding_window / max_window_layers only act with use_sliding_window, which is off: not written, so a
    # re-export keeps a source's values
    d.update(hidden_act="silu", attention_dropout=0.0, use_sliding_window=False, use_cache=True)
    return d


def hf_config(cfg: Qwen2Config) -> dict:
    """config.json for Qwen2ForCausalLM (transformers, vLLM, MindIE read these keys)."""
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **text_config(cfg),
            "torch_dtype": "bfloat16"}


def config_from_hf(d: dict, names=None) -> Qwen2Config:
    """config.json (+ the serving tensor names; None: the config alone) -> our validated config.

    Shape keys are required; absent behaviour keys take Qwen2Config's defaults (num_key_value_heads =
    num_attention_heads, rms_norm_eps 1e-6, rope_theta 1e4, tie_word_embeddings false). A config with
    a sliding window in use, a rope scaling other than none / mrope (Qwen2.5-VL, read by mindvl), a
    head_dim other than hidden / heads or an activation other than silu is refused in one line.
    """
    k = ConfigReader(d)
    if k.get("hidden_act", default="silu") != "silu":
        k.refuse("hidden_act", d["hidden_act"], "is not SwiGLU's silu", "only silu MLPs are implemented")
    if k.get("use_sliding_window", default=False):
        k.refuse("use_sliding_window", True, "is not implemented (every layer attends to the whole sequence)",
                 "set use_sliding_window: false (the released Qwen2.5 checkpoints do)")
    scaling = k.get("rope_scaling", default=None)
    if scaling and (scaling.get("type") or scaling.get("rope_type")) not in ("mrope", "default"):
        k.refuse("rope_scaling", scaling, "is not implemented", "use a checkpoint without rope_scaling (or mrope)")
    hidden, heads = k.get("hidden_size"), k.get("num_attention_heads")
    head_dim = k.get("head_dim", rule=lambda: hidden // heads)
    if head_dim * heads != hidden:
        k.refuse("head_dim", head_dim, f"x {heads} heads != hidden_size {hidden}",
                 "this Qwen2 implementation computes head_dim = hidden_size / num_attention_heads")
    cfg = Qwen2Config(
        vocab_size=k.get("vocab_size"), hidden_size=hidden, intermediate_size=k.get("intermediate_size"),
        num_hidden_layers=k.get("num_hidden_layers"), num_attention_heads=heads,
        num_key_value_heads=k.get("num_key_value_heads", rule=lambda: heads),
        rms_norm_eps=k.get("rms_norm_eps", default=1e-6), rope_theta=k.get("rope_theta", default=1e4),
        tie_word_embeddings=k.get("tie_word_embeddings", default=False),
        max_position_embeddings=k.get("max_position_embeddings", default=32768),
        initializer_range=k.get("initializer_range", default=0.02))
    if names is not None and cfg.tie_word_embeddings and "lm_head.weight" in names:
        k.refuse("tie_word_embeddings", True, "but the checkpoint has lm_head.weight",
                 "set tie_word_embeddings: false in config.json (the head is a separate tensor)")
    return cfg.validate()


SERVING = ServingLayout(model_type="qwen2", architecture="Qwen2ForCausalLM", to_hf=to_hf, from_hf=from_hf,
                        config_to_hf=hf_config, config_from_hf=config_from_hf)
