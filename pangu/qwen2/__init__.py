"""Qwen2 (dense; the language model of Qwen2.5-VL): config.py, model.py, convert.py, spec.py."""
from pangu.qwen2.config import PRESETS, Qwen2Config, count_parameters, model_shape
from pangu.qwen2.model import Qwen2ForCausalLM, build_model, init_weights
from pangu.qwen2.spec import SPEC

__all__ = ["Qwen2Config", "PRESETS", "Qwen2ForCausalLM", "build_model", "count_parameters", "init_weights",
           "model_shape", "SPEC"]
