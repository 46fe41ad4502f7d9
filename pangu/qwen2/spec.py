"""Qwen2's ModelSpec (pangu.spec): config, model, counts, shape and serving layout in one place."""
from pangu.qwen2 import config, convert, model
from pangu.spec import ModelSpec

SPEC = ModelSpec(
    name="qwen2", config_cls=config.Qwen2Config, presets=config.PRESETS, instantiate=model.Qwen2ForCausalLM,
    init_weights=model.init_weights, count_parameters=config.count_parameters, shape=config.model_shape,
    serving=convert.SERVING)
