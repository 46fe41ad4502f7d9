"""Name + layout maps between our MindSpore parameters and the serving (HF/vLLM) layout.

Ours == serving except:
  model.layers.N.mlp.gate.router_scale         <-> model.layers.N.mlp.router_scale
  model.layers.N.mlp.experts.{gate,up,down}_proj (stacked [E, out, in])
                                               <-> model.layers.N.mlp.experts.{e}.{...}_proj.weight
Linear weights are [out, in] on both sides, so no transposes. Values are numpy arrays.
"""
import numpy as np

from pangu.common.expert_layout import collect_per_expert, model_state, split_stacked, stack_per_expert

__all__ = ["to_hf", "from_hf", "hf_config", "model_state"]
_OURS_SCALE = ".mlp.gate.router_scale"
_HF_SCALE = ".mlp.router_scale"


def to_hf(state: dict) -> dict:
    """Our {name: array} -> serving {name: array} (experts split per expert)."""
    out = {}
    for name, value in state.items():
        value = np.asarray(value)
        split = split_stacked(name, value)
        if split is not None:
            out.update(split)
        elif name.endswith(_OURS_SCALE):
            out[name[: -len(_OURS_SCALE)] + _HF_SCALE] = value
        else:
            out[name] = value
    return out


def from_hf(state: dict) -> dict:
    """Serving {name: array} -> our {name: array} (per-expert weights stacked in expert order)."""
    out, experts = {}, {}
    for name, value in state.items():
        value = np.asarray(value)
        if collect_per_expert(name, value, experts):
            continue
        if name.endswith(_HF_SCALE):
            out[name[: -len(_HF_SCALE)] + _OURS_SCALE] = value
        else:
            out[name] = value
    out.update(stack_per_expert(experts))
    return out


def hf_config(cfg) -> dict:
    """config.json for the serving stack (PanguProMoEForCausalLM)."""
    d = cfg.to_dict()
    for k in ("compute_dtype", "expert_impl", "attention_impl", "ops_impl", "attention_bias"):
        d.pop(k)
    d.update(architectures=["PanguProMoEForCausalLM"], model_type="PanguProMoE",
             hidden_act="silu", torch_dtype="bfloat16")
    return d
