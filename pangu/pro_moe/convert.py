"""Pangu Pro MoE <-> its serving layout (`PanguProMoEForCausalLM`, model_type "PanguProMoE").

Ours == serving except:
  model.layers.N.mlp.gate.router_scale         <-> model.layers.N.mlp.router_scale
  model.layers.N.mlp.experts.{gate,up,down}_proj (stacked [E, out, in])
                                               <-> model.layers.N.mlp.experts.{e}.{...}_proj.weight
Linear weights are [out, in] on both sides, so no transposes. Values are numpy arrays.
"""
import dataclasses

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
    """config.json for the serving stack (PanguProMoEForCausalLM)."""
    d = cfg.to_dict()
    for k in _LOCAL_FIELDS:
        d.pop(k)
    d.update(architectures=["PanguProMoEForCausalLM"], model_type="PanguProMoE",
             hidden_act="silu", torch_dtype="bfloat16")
    return d


def config_from_hf(d: dict, names=None) -> PanguProMoEConfig:
    """config.json (+ the serving tensor names; None: the config alone, e.g. for planning) -> our config."""
    fields = {f.name for f in dataclasses.fields(PanguProMoEConfig)}
    kw = {k: v for k, v in d.items() if k in fields}
    if names is not None:  # hf_config drops attention_bias (the release always has biases): read the tensors
        kw["attention_bias"] = any(n.endswith(".self_attn.q_proj.bias") for n in names)
    return PanguProMoEConfig(**kw).validate()


SERVING = ServingLayout(model_type="PanguProMoE", architecture="PanguProMoEForCausalLM", to_hf=to_hf,
                        from_hf=from_hf, config_to_hf=hf_config, config_from_hf=config_from_hf)
