"""Pangu Ultra MoE (MLA + DSSN + sigmoid top-k MoE + MTP; 718B total / 39B active)."""
from pangu.ultra_moe.config import PRESETS, PanguUltraMoEConfig, count_parameters
from pangu.ultra_moe.model import (PanguUltraMoEForCausalLM, build_model, init_weights,
                                   logical_axes)

ARCH_SPEC = dict(config_cls=PanguUltraMoEConfig, presets=PRESETS, model_cls=PanguUltraMoEForCausalLM,
                 build_model=build_model, count_parameters=count_parameters,
                 convert_module="pangu.ultra_moe.convert")

__all__ = ["PanguUltraMoEConfig", "PRESETS", "PanguUltraMoEForCausalLM", "build_model",
           "count_parameters", "init_weights", "logical_axes", "ARCH_SPEC"]
