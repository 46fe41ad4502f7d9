"""Pangu Pro MoE (MoGE, 71.99B total / 16.50B active)."""
from pangu.pro_moe.config import PRESETS, PanguProMoEConfig
from pangu.pro_moe.model import (PanguProMoEForCausalLM, build_model, count_parameters,
                                 init_weights, logical_axes)

ARCH_SPEC = dict(config_cls=PanguProMoEConfig, presets=PRESETS, model_cls=PanguProMoEForCausalLM,
                 build_model=build_model, count_parameters=count_parameters,
                 convert_module="pangu.pro_moe.convert")

__all__ = ["PanguProMoEConfig", "PRESETS", "PanguProMoEForCausalLM", "build_model",
           "count_parameters", "init_weights", "logical_axes", "ARCH_SPEC"]
