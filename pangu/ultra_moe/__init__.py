"""Pangu Ultra MoE (MLA + DSSN + sigmoid top-k MoE + MTP; 718B total / 39B active):
config.py, model.py, convert.py, spec.py."""
from pangu.ultra_moe.config import PRESETS, PanguUltraMoEConfig, count_parameters, model_shape
from pangu.ultra_moe.model import PanguUltraMoEForCausalLM, build_model, init_weights
from pangu.ultra_moe.spec import SPEC

__all__ = ["PanguUltraMoEConfig", "PRESETS", "PanguUltraMoEForCausalLM", "build_model", "count_parameters",
           "init_weights", "model_shape", "SPEC"]
