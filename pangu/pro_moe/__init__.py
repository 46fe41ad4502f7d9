"""Pangu Pro MoE (MoGE, 71.99B total / 16.50B active): config.py, model.py, convert.py, spec.py."""
from pangu.pro_moe.config import PRESETS, PanguProMoEConfig, count_parameters, model_shape
from pangu.pro_moe.model import PanguProMoEForCausalLM, build_model, init_weights
from pangu.pro_moe.spec import SPEC

__all__ = ["PanguProMoEConfig", "PRESETS", "PanguProMoEForCausalLM", "build_model", "count_parameters",
           "init_weights", "model_shape", "SPEC"]
