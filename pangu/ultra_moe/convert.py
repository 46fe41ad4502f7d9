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

from pangu.common.expert_layout import from_serving, to_serving
from pangu.spec import ServingLayout
from pangu.ultra_moe.config import PanguUltraMoEConfig

_MTP_COPIES = re.compile(r"^model\.layers\.(\d+)\.(embed_tokens\.weight|shared_head\.head\.weight)$")
_LOAD_SUFFIX = ".mlp.gate.expert_load"


def to_hf(state: dict, cfg: PanguUltraMoEConfig) -> dict:
    """Our {name: array} -> serving {name: array}."""
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
        for i in range(cfg.num_dense_layers, cfg.num_hidden_layers + cfg.num_mtp_layers):
            out[f"model.layers.{i}{_LOAD_SUFFIX}"] = np.zeros(cfg.num_routed_experts, np.float32)
    return out


def hf_config(cfg: PanguUltraMoEConfig) -> dict:
    """config.json for the serving stack."""
    return cfg.to_hf_dict()


def config_from_hf(d: dict, names=None) -> PanguUltraMoEConfig:
    """config.json (+ the serving tensor names; None: the config alone, e.g. for planning) -> our config."""
    cfg = PanguUltraMoEConfig.from_hf_dict(d)
    if names is None:
        return cfg
    # config.json has no key for the selection bias; the checkpoint either has it or not
    has_bias = any(n.endswith(".mlp.gate.e_score_correction_bias") for n in names)
    return cfg.replace(router_enable_expert_bias=has_bias,
                       router_bias_update_rate=cfg.router_bias_update_rate if has_bias else 0.0)


SERVING = ServingLayout(model_type="pangu_ultra_moe", architecture="PanguUltraMoEForCausalLM", to_hf=to_hf,
                        from_hf=from_hf, config_to_hf=hf_config, config_from_hf=config_from_hf)
