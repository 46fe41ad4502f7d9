"""Pangu Ultra MoE <-> its serving layout (`PanguUltraMoEForCausalLM`, model_type "pangu_ultra_moe";
vLLM openpangu / openpangu_mtp).

Ours == serving except:
  model.layers.N.mlp.experts.{gate,up,down}_proj  stacked [E, out, in]
      <-> model.layers.N.mlp.experts.{e}.{gate,up,down}_proj.weight   (one [out, in] per expert)
  model.layers.N.mlp.gate.expert_load  (training-only load counter)  -> dropped on export,
      zeros on import (only present when router_bias_update_rate > 0)
  MTP layers model.layers.{L+i}: serving also stores copies of the shared weights,
      model.layers.{L+i}.embed_tokens.weight (= model.embed_tokens.weight) and
      model.layers.{L+i}.shared_head.head.weight (= lm_head.weight); written on export,
      dropped on import.
Linear weights are [out, in] on both sides (no transposes); values are numpy arrays.
"""
import re

import numpy as np

from pangu.common.config_utils import ConfigReader
from pangu.common.expert_layout import from_serving, to_serving
from pangu.spec import ServingLayout
from pangu.ultra_moe.config import PanguUltraMoEConfig

_MTP_COPIES = re.compile(r"^model\.layers\.(\d+)\.(embed_tokens\.weight|shared_head\.head\.weight)$")
_LOAD_SUFFIX = ".mlp.gate.expert_load"


def to_hf(state: dict, cfg: PanguUltraMoEConfig) -> dict:
    """Our {name: array} -> serving {name: array} (both layouts: the same tensor names)."""
    out = to_serving(state, drop=(_LOAD_SUFFIX,))
    head = state["model.embed_tokens.weight"] if cfg.tie_word_embeddings else state["lm_head.weight"]
    for i in range(cfg.num_mtp_layers):
        n = cfg.num_hidden_layers + i
        out[f"model.layers.{n}.embed_tokens.weight"] = np.asarray(state["model.embed_tokens.weight"])
        out[f"model.layers.{n}.shared_head.head.weight"] = np.asarray(head)
    return out


def from_hf(state: dict, cfg: PanguUltraMoEConfig) -> dict:
    """Serving {name: array} -> our {name: array} (per-expert weights stacked in expert order)."""
    out = from_serving(state, skip=_MTP_COPIES)   # MTP copies are shared with the main model
    if cfg.router_bias_update_rate > 0:
        for i in _moe_layers(cfg):
            out[f"model.layers.{i}{_LOAD_SUFFIX}"] = np.zeros(cfg.num_routed_experts, np.float32)
    return out


def _moe_layers(cfg):
    L, mtp_moe = cfg.num_hidden_layers, cfg.num_dense_layers < cfg.num_hidden_layers
    return [i for i in range(L + cfg.num_mtp_layers) if cfg.num_dense_layers <= i < L or (i >= L and mtp_moe)]


# -------------------------------------------------------------------------------------------- config.json
# Every key a serving loader reads to rebuild the network, its routing and its attention (docs/export.md has
# the table: which loader reads which key). Ours first; the DeepSeek-V3 spellings that mainline vLLM's
# openpangu.py reads are written next to openPangu's own (transformers remote code, vLLM-Ascend / omni-infer).
_OPENPANGU_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                   "attention_q_lora_dim", "attention_kv_lora_dim", "attention_qk_dim",
                   "attention_qk_rope_dim", "attention_v_dim", "intermediate_size",
                   "moe_intermediate_size", "num_routed_experts", "num_experts_per_tok",
                   "num_shared_experts", "num_dense_layers", "num_mtp_layers", "routed_scaling_factor",
                   "norm_topk_prob", "rms_norm_eps", "rope_theta", "max_position_embeddings",
                   "sandwich_norm", "tie_word_embeddings")


def _deepseek_names(cfg) -> dict:
    return {"q_lora_rank": cfg.attention_q_lora_dim, "kv_lora_rank": cfg.attention_kv_lora_dim,
            "qk_nope_head_dim": cfg.attention_qk_dim, "qk_rope_head_dim": cfg.attention_qk_rope_dim,
            "v_head_dim": cfg.attention_v_dim, "n_routed_experts": cfg.num_routed_experts,
            "n_shared_experts": cfg.num_shared_experts, "first_k_dense_replace": cfg.num_dense_layers,
            "num_nextn_predict_layers": cfg.num_mtp_layers}


def hf_config(cfg: PanguUltraMoEConfig) -> dict:
    """config.json of the openPangu layout (PanguUltraMoEForCausalLM, model_type pangu_ultra_moe)."""
    if cfg.n_group > 1 and cfg.topk_group < cfg.n_group:
        raise ValueError(f"n_group: {cfg.n_group} / topk_group {cfg.topk_group} (group-limited routing) has no "
                         "openPangu export: its loaders route with one group; export with --layout deepseek_v3")
    d = {k: getattr(cfg, k) for k in _OPENPANGU_KEYS}
    d.update(architectures=["PanguUltraMoEForCausalLM"], model_type="pangu_ultra_moe", hidden_act="silu",
             torch_dtype="bfloat16", num_key_value_heads=cfg.num_attention_heads,
             router_enable_expert_bias=cfg.router_enable_expert_bias, rope_interleave=True, **_deepseek_names(cfg),
             # DeepSeek-V3's routing keys, which omni-infer's openPangu model reads (one group, as vLLM routes)
             scoring_func="sigmoid", topk_method=_topk_method(cfg), n_group=1, topk_group=1)
    return d


def _topk_method(cfg) -> str:
    """DeepSeek's name for the selection: `noaux_tc` adds e_score_correction_bias, `greedy` does not."""
    return "noaux_tc" if cfg.router_enable_expert_bias else "greedy"


def deepseek_config(cfg: PanguUltraMoEConfig) -> dict:
    """config.json of the DeepSeek-V3 layout (DeepseekV3ForCausalLM): the same network without the sandwich
    norms; the selection bias is always there (topk_method noaux_tc), zeros when the model has none."""
    if cfg.sandwich_norm:
        raise ValueError("sandwich_norm: true (DSSN post-norms) has no DeepseekV3ForCausalLM export: that layout "
                         "is pre-norm only; export the openPangu layout (the default) or train with "
                         "model.sandwich_norm=false")
    return {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
            "moe_intermediate_size": cfg.moe_intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_attention_heads,
            **_deepseek_names(cfg), "routed_scaling_factor": cfg.routed_scaling_factor, "topk_method": "noaux_tc",
            "scoring_func": "sigmoid", "n_group": cfg.n_group, "topk_group": cfg.topk_group,
            "num_experts_per_tok": cfg.num_experts_per_tok, "norm_topk_prob": cfg.norm_topk_prob,
            "moe_layer_freq": 1, "hidden_act": "silu", "max_position_embeddings": cfg.max_position_embeddings,
            "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta, "rope_interleave": True,
            "attention_bias": False, "tie_word_embeddings": cfg.tie_word_embeddings, "torch_dtype": "bfloat16"}


def deepseek_to_hf(state: dict, cfg: PanguUltraMoEConfig) -> dict:
    out = to_hf(state, cfg)
    if not cfg.router_enable_expert_bias:   # DeepSeek-V3 always selects with a bias: zeros = none
        for i in _moe_layers(cfg):
            out[f"model.layers.{i}.mlp.gate.e_score_correction_bias"] = np.zeros(cfg.num_routed_experts, np.float32)
    return out


def _layer_indices(names, suffix):
    return sorted({int(m.group(1)) for n in names for m in [re.match(r"^model\.layers\.(\d+)\." + suffix, n)] if m})


def config_from_hf(d: dict, names=None) -> PanguUltraMoEConfig:
    """An openPangu or DeepSeek-V3 config.json (+ the serving tensor names; None: the config alone, e.g. for
    planning) -> our config. Every spelling either layout uses is read (`attention_kv_lora_dim` or
    `kv_lora_rank`, `num_routed_experts` or `n_routed_experts`, `num_dense_layers` or
    `first_k_dense_replace`, `num_mtp_layers` or `num_nextn_predict_layers`, `rope_theta` or
    `rope_parameters.rope_theta`, ...). Shape keys are required or derived from the tensors (MTP layers, dense
    layers, sandwich norms, the selection bias); behaviour keys take the layout's config-class defaults;
    what this implementation cannot honour (softmax scoring, rope scaling, rotate-half rope, no query
    compression) is refused in one line on import."""
    deepseek = d.get("model_type") == "deepseek_v3"
    k = ConfigReader(d)
    importing = names is not None
    names = list(names or ())
    if k.get("hidden_act", default="silu") != "silu":
        k.refuse("hidden_act", d["hidden_act"], "is not SwiGLU's silu", "only silu experts are implemented")
    if "q_lora_rank" in d and d["q_lora_rank"] is None:
        k.refuse("q_lora_rank", None, "(no query compression) is not implemented", "use a q_lora checkpoint")
    if k.get("scoring_func", default="sigmoid") != "sigmoid":
        k.refuse("scoring_func", d["scoring_func"], "is not sigmoid routing", "only sigmoid top-k routing is implemented")
    method = k.get("topk_method", default=None)
    if method not in (None, "noaux_tc", "greedy"):
        k.refuse("topk_method", method, "is not noaux_tc (top-k with the selection bias) or greedy (without)",
                 "only sigmoid top-k, group-limited or not, is implemented")
    if not k.get("rope_interleave", default=True):
        k.refuse("rope_interleave", False, "(rotate-half MLA rope) is not implemented", "use an interleaved checkpoint")
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if importing and rope_type not in ("default", None):
        k.refuse("rope_scaling", rope_type, "scaling of the rope is not implemented here",
                 "import a checkpoint without rope scaling (the planner reads such configs without it)")
    heads = k.get("num_attention_heads")
    if k.get("num_key_value_heads", default=heads) != heads:
        k.refuse("num_key_value_heads", d["num_key_value_heads"], f"!= num_attention_heads {heads}",
                 "MLA has one key/value head per query head")
    layers = k.get("num_hidden_layers")
    dense = _layer_indices(names, r"mlp\.gate_proj\.")
    nd = k.get("num_dense_layers", "first_k_dense_replace",
               rule=(lambda: len([i for i in dense if i < layers])) if importing else None)
    mtp = k.get("num_mtp_layers", "num_nextn_predict_layers",
                rule=lambda: len([i for i in _layer_indices(names, "") if i >= layers]))
    if importing and len([i for i in _layer_indices(names, "") if i >= layers]) != mtp:
        raise ValueError(f"num_mtp_layers: config.json says {mtp} MTP layers but the tensors hold "
                         f"{len([i for i in _layer_indices(names, '') if i >= layers])} layers after layer "
                         f"{layers - 1}; fix num_mtp_layers / num_nextn_predict_layers")
    has_sandwich = bool(_layer_indices(names, r"pre_mlp_layernorm\."))
    sandwich = False if deepseek else k.get("sandwich_norm", rule=lambda: has_sandwich)
    if importing and sandwich != has_sandwich:
        raise ValueError(f"sandwich_norm: config.json says {sandwich} but the tensors {'have' if has_sandwich else 'lack'}"
                         " pre_mlp_layernorm / post_mlp_layernorm; fix sandwich_norm")
    has_bias = bool(_layer_indices(names, r"mlp\.gate\.e_score_correction_bias"))
    bias = k.get("router_enable_expert_bias",
                 rule=lambda: method == "noaux_tc" if method else (has_bias if importing else deepseek))
    if method and bias != (method == "noaux_tc"):
        raise ValueError(f"router_enable_expert_bias: {bias} contradicts topk_method {method!r} (noaux_tc = with the "
                         "selection bias); make the two keys agree")
    if importing and bias != has_bias:
        raise ValueError(f"router_enable_expert_bias: config.json says {bias} but the tensors "
                         f"{'have' if has_bias else 'lack'} mlp.gate.e_score_correction_bias; fix the key")
    theta = k.get("rope_theta", rule=lambda: rope.get("rope_theta", 1e4 if deepseek else 2.56e7))
    moe_width = k.get("moe_intermediate_size")
    cfg = PanguUltraMoEConfig(
        vocab_size=k.get("vocab_size"), hidden_size=k.get("hidden_size"), num_hidden_layers=layers,
        num_attention_heads=heads, attention_q_lora_dim=k.get("attention_q_lora_dim", "q_lora_rank"),
        attention_kv_lora_dim=k.get("attention_kv_lora_dim", "kv_lora_rank"),
        attention_qk_dim=k.get("attention_qk_dim", "qk_nope_head_dim"),
        attention_qk_rope_dim=k.get("attention_qk_rope_dim", "qk_rope_head_dim"),
        attention_v_dim=k.get("attention_v_dim", "v_head_dim"),
        intermediate_size=k.get("intermediate_size", rule=(lambda: moe_width) if nd == 0 else None),
        moe_intermediate_size=moe_width, num_routed_experts=k.get("num_routed_experts", "n_routed_experts"),
        num_experts_per_tok=k.get("num_experts_per_tok"),
        num_shared_experts=k.get("num_shared_experts", "n_shared_experts"), num_dense_layers=nd,
        num_mtp_layers=mtp, routed_scaling_factor=k.get("routed_scaling_factor", default=2.5),
        norm_topk_prob=k.get("norm_topk_prob", default=True),
        n_group=k.get("n_group", default=8 if deepseek else 1), topk_group=k.get("topk_group", default=4 if deepseek else 1),
        router_enable_expert_bias=bias, rms_norm_eps=k.get("rms_norm_eps", default=1e-6 if deepseek else 1e-5),
        rope_theta=theta, max_position_embeddings=k.get("max_position_embeddings", default=4096 if deepseek else 131072),
        sandwich_norm=sandwich, tie_word_embeddings=k.get("tie_word_embeddings", default=False))
    return cfg.validate()


SERVING = ServingLayout(model_type="pangu_ultra_moe", architecture="PanguUltraMoEForCausalLM", to_hf=to_hf,
                        from_hf=from_hf, config_to_hf=hf_config, config_from_hf=config_from_hf,
                        required_keys=("router_enable_expert_bias", "sandwich_norm", "num_mtp_layers",
                                       "num_nextn_predict_layers"))
DEEPSEEK_V3 = ServingLayout(model_type="deepseek_v3", architecture="DeepseekV3ForCausalLM", to_hf=deepseek_to_hf,
                            from_hf=from_hf, config_to_hf=deepseek_config, config_from_hf=config_from_hf)
