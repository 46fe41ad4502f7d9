"""MindVL's ModelSpec (pangu.spec): `model.arch: mindvl` builds this model, the recipe's `data:` section is a
MindVLDataConfig, the trainer reads MultimodalPackedDataset rows and logs exact-match validation accuracy
at every evaluation; export/import use the Qwen2.5-VL serving layout of mindvl.convert."""
from mindvl import config, convert, model
from mindvl.dataset import MindVLDataConfig, MultimodalPackedDataset
from mindvl.evaluate import evaluate_dataset
from pangu.spec import ModelSpec

SPEC = ModelSpec(
    name="mindvl", config_cls=config.MindVLConfig, presets=config.PRESETS, instantiate=model.MindVL,
    init_weights=model.init_weights, count_parameters=config.count_parameters, shape=config.model_shape,
    serving=convert.SERVING, data_config_cls=MindVLDataConfig, build_dataset=MultimodalPackedDataset,
    evaluate=evaluate_dataset, forward_inputs=model.forward_inputs)
