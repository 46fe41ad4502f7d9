"""Pangu Ultra MoE's ModelSpec (pangu.spec): config, model, counts, shape and serving layout in one place."""
from pangu.spec import ModelSpec
from pangu.ultra_moe import config, convert, model

SPEC = ModelSpec(
    name="pangu_ultra_moe", config_cls=config.PanguUltraMoEConfig, presets=config.PRESETS,
    instantiate=model.instantiate, init_weights=model.init_weights,
    count_parameters=config.count_parameters, shape=config.model_shape, serving=convert.SERVING,
    other_layouts={"deepseek_v3": convert.DEEPSEEK_V3})
