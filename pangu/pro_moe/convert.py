"""Pangu Pro MoE <-> its serving layout (`PanguProMoEForCausalLM`, model_type "PanguProMoE").

Ours == serving except:
  model.layers.N.mlp.gate.router_scale         <-> model.layers.N.mlp.router_scale
  model.layers.N.mlp.experts.{gate,up,down}_proj (stacked [E, out, in])
                                               <-> model.layers.N.mlp.experts.{e}.{...}_proj.weight
Linear weights are [out, in] on both sides, so no transposes. Values are numpy arrays.
"""
from pangu.common.config_utils import ConfigReader
from pangu.common.expert_layout import from_serving, to_serving
from pangu.pro_moe.config import PanguProMoEConfig
from pangu.spec import ServingLayout

_RENAMES = ((".mlp.gate.router_scale", ".mlp.router_scale"),)
# switches of this implementation, not facts of the network: never written to config.json
_LOCAL_FIELDS = ("compute_dtype", "expert_impl", "attention_impl", "ops_impl", "attention_bias")


def to_hf(state: dict, cfg=None) -> dict:
    """Our {name: array} -> serving {name: array} (experts split per expert)."""
    return to_serving(state, _RENAMES)


def from_hf(state: dict, cfg=None) -> dict:
    """Serving {name: array} -> our {name: array} (per-expert weights stacked in expert order)."""
    return from_serving(state, _RENAMES)


def hf_config(cfg: PanguProMoEConfig) -> dict:
    """config.json for the serving stack (PanguProMoEForCausalLM). Its loaders compute the head width as
    hidden_size / num_attention_heads, so a model whose head_dim differs is refused here."""
    if cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size:
        raise ValueError(f"head_dim: {cfg.head_dim} x {cfg.num_attention_heads} heads != hidden_size "
                         f"{cfg.hidden_size}; PanguProMoE loaders compute head_dim = hidden_size / "
                         "num_attention_heads, so this model has no PanguProMoE export (train with head_dim = "
                         "hidden_size / num_attention_heads)")
    if not cfg.attention_bias:
        raise ValueError("attention_bias: false; PanguProMoE loaders always build q/k/v/o biases, so this model "
                         "has no PanguProMoE export (train with attention_bias: true)")
    d = cfg.to_dict()
    for k in _LOCAL_FIELDS:
        d.pop(k)
    d.update(architectures=["PanguProMoEForCausalLM"], model_type="PanguProMoE",
             hidden_act="silu", torch_dtype="bfloat16")
    return d


def config_from_hf(d: dict, names=None) -> PanguProMoEConfig:
    """config.json (+ the serving tensor names; None: the config alone, e.g. for planning) -> our config.

    Shape keys are required; absent ones follow the layout's rules: num_key_value_heads =
    num_attention_heads, head_dim = hidden_size / num_attention_heads (what the released modelling code
    computes; `qk_nope_dim` is its spelling), q/k/v/o biases always (the released layout has them: read
    off the tensors when given). Behaviour keys take the released config class's defaults.
    """
    k = ConfigReader(d)
    if k.get("hidden_act", default="silu") != "silu":
        k.refuse("hidden_act", d["hidden_act"], "is not SwiGLU's silu", "only silu experts are implemented")
    if k.get("qk_rope_dim", default=0):
        k.refuse("qk_rope_dim", d["qk_rope_dim"], "splits the head into rope / no-rope parts",
                 "this Pro implementation rotates the whole head (qk_rope_dim absent or 0)")
    hidden, heads = k.get("hidden_size"), k.get("num_attention_heads")
    cfg = PanguProMoEConfig(
        vocab_size=k.get("vocab_size"), hidden_size=hidden, num_hidden_layers=k.get("num_hidden_layers"),
        num_attention_heads=heads, num_key_value_heads=k.get("num_key_value_heads", rule=lambda: heads),
        head_dim=k.get("head_dim", "qk_nope_dim", rule=lambda: hidden // heads),
        moe_intermediate_size=k.get("moe_intermediate_size"),
        shared_expert_intermediate_size=k.get("shared_expert_intermediate_size"),
        num_experts=k.get("num_experts"), num_experts_per_tok=k.get("num_experts_per_tok"),
        rms_norm_eps=k.get("rms_norm_eps", default=1e-5), rope_theta=k.get("rope_theta", default=1.6e7),
        router_aux_loss_coef=k.get("router_aux_loss_coef", default=0.001),
        tie_word_embeddings=k.get("tie_word_embeddings", default=False),
        max_position_embeddings=k.get("max_position_embeddings", default=131072),
        initializer_range=k.get("initializer_range", default=0.02),
        attention_bias=True if names is None else any(n.endswith(".self_attn.q_proj.bias") for n in names))
    return cfg.validate()


SERVING = ServingLayout(model_type="PanguProMoE", architecture="PanguProMoEForCausalLM", to_hf=to_hf,
                        from_hf=from_hf, config_to_hf=hf_config, config_from_hf=config_from_hf)
