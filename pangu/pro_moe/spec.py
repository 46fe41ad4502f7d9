"""Pangu Pro MoE's ModelSpec (pangu.spec): config, model, counts, shape and serving layout in one place."""
from pangu.pro_moe import config, convert, model
from pangu.spec import ModelSpec

SPEC = ModelSpec(
    name="pangu_pro_moe", config_cls=config.PanguProMoEConfig, presets=config.PRESETS,
    instantiate=model.PanguProMoEForCausalLM, init_weights=model.init_weights,
    count_parameters=config.count_parameters, shape=config.model_shape, serving=convert.SERVING)
