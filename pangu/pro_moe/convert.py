"""Name + layout maps between our MindSpore parameters and the serving (HF/vLLM) layout.

Ours == serving except:
  model.layers.N.mlp.gate.router_scale         <-> model.layers.N.mlp.router_scale
  model.layers.N.mlp.experts.{gate,up,down}_proj (stacked [E, out, in])
                                               <-> model.layers.N.mlp.experts.{e}.{...}_proj.weight
Linear weights are [out, in] on both sides, so no transposes. Values are numpy arrays.
"""
import re

import numpy as np

_STACKED = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_proj|up_proj|down_proj)$")
_PER_EXPERT = re.compile(
    r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_OURS_SCALE = ".mlp.gate.router_scale"
_HF_SCALE = ".mlp.router_scale"


def to_hf(state: dict) -> dict:
    """Our {name: array} -> serving {name: array} (experts split per expert)."""
    out = {}
    for name, value in state.items():
        value = np.asarray(value)
        m = _STACKED.match(name)
        if m:
            for e in range(value.shape[0]):
                out[f"{m.group(1)}.{e}.{m.group(2)}.weight"] = value[e]
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
        m = _PER_EXPERT.match(name)
        if m:
            experts.setdefault(f"{m.group(1)}.{m.group(3)}", {})[int(m.group(2))] = value
        elif name.endswith(_HF_SCALE):
            out[name[: -len(_HF_SCALE)] + _OURS_SCALE] = value
        else:
            out[name] = value
    for key, by_e in experts.items():
        n = len(by_e)
        if sorted(by_e) != list(range(n)):
            raise ValueError(f"{key}: expert indices {sorted(by_e)} are not 0..{n - 1}; "
                             "the checkpoint is missing experts")
        out[key] = np.stack([by_e[e] for e in range(n)])
    return out


def hf_config(cfg) -> dict:
    """config.json for the serving stack (PanguProMoEForCausalLM)."""
    d = cfg.to_dict()
    for k in ("compute_dtype", "expert_impl", "attention_impl", "ops_impl", "attention_bias"):
        d.pop(k)
    d.update(architectures=["PanguProMoEForCausalLM"], model_type="PanguProMoE",
             hidden_act="silu", torch_dtype="bfloat16")
    return d


def model_state(model) -> dict:
    """{our name: numpy array} of a MindSpore model."""
    return {name: p.asnumpy() for name, p in model.parameters_and_names()}
