"""Name + layout maps between our MindSpore parameters and the serving layout
(`PanguUltraMoEForCausalLM`, model_type "pangu_ultra_moe"; vLLM openpangu / openpangu_mtp).

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

from pangu.common.expert_layout import collect_per_expert, model_state, split_stacked, stack_per_expert

__all__ = ["to_hf", "from_hf", "hf_config", "model_state"]
_MTP_COPIES = re.compile(r"^model\.layers\.(\d+)\.(embed_tokens\.weight|shared_head\.head\.weight)$")
_LOAD_SUFFIX = ".mlp.gate.expert_load"


def to_hf(state: dict, cfg) -> dict:
    """Our {name: array} -> serving {name: array}."""
    out = {}
    for name, value in state.items():
        value = np.asarray(value)
        split = split_stacked(name, value)
        if split is not None:
            out.update(split)
        elif name.endswith(_LOAD_SUFFIX):
            continue
        else:
            out[name] = value
    head = state["model.embed_tokens.weight"] if cfg.tie_word_embeddings else state["lm_head.weight"]
    for i in range(cfg.num_mtp_layers):
        n = cfg.num_hidden_layers + i
        out[f"model.layers.{n}.embed_tokens.weight"] = np.asarray(state["model.embed_tokens.weight"])
        out[f"model.layers.{n}.shared_head.head.weight"] = np.asarray(head)
    return out


def from_hf(state: dict, cfg) -> dict:
    """Serving {name: array} -> our {name: array} (per-expert weights stacked in expert order)."""
    out, experts = {}, {}
    for name, value in state.items():
        value = np.asarray(value)
        if collect_per_expert(name, value, experts) or _MTP_COPIES.match(name):
            continue  # MTP copies are shared with the main model
        out[name] = value
    out.update(stack_per_expert(experts))
    if cfg.router_bias_update_rate > 0:
        for i in range(cfg.num_dense_layers, cfg.num_hidden_layers + cfg.num_mtp_layers):
            out[f"model.layers.{i}{_LOAD_SUFFIX}"] = np.zeros(cfg.num_routed_experts, np.float32)
    return out


def hf_config(cfg) -> dict:
    """config.json for the serving stack."""
    return cfg.to_hf_dict()



def load_state(model, state: dict) -> None:
    """Copy {our name: array} into `model` (shapes and name sets must match exactly)."""
    from mindspore import Tensor
    params = dict(model.parameters_and_names())
    missing = sorted(set(params) - set(state))
    extra = sorted(set(state) - set(params))
    if missing or extra:
        raise ValueError(f"state: names differ from the model (missing {missing[:3]}, unexpected "
                         f"{extra[:3]}); convert with from_hf and the matching config")
    for name, p in params.items():
        if tuple(p.shape) != tuple(state[name].shape):
            raise ValueError(f"{name}: shape {state[name].shape} != model {tuple(p.shape)}; "
                             "check the config matches the checkpoint")
        p.set_data(Tensor(np.asarray(state[name], np.float32)))
