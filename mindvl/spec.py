"""MindVL's ModelSpecs (pangu.spec): `model.arch: mindvl` (Qwen2 decoder, the Qwen2.5-VL serving layout) and
`model.arch: mindvl_pangu` (a Pangu MoE decoder, its own serving layout). The recipe's `data:` section is a
MindVLDataConfig, the trainer reads MultimodalPackedDataset rows and logs exact-match validation accuracy at
every evaluation; export/import use the layouts of mindvl.convert."""
from mindvl import config, convert, model
from mindvl.dataset import MindVLDataConfig, MultimodalPackedDataset
from mindvl.evaluate import evaluate_dataset
from pangu.spec import ModelSpec

_COMMON = dict(instantiate=model.MindVL, init_weights=model.init_weights, count_parameters=config.count_parameters,
               shape=config.model_shape, data_config_cls=MindVLDataConfig, build_dataset=MultimodalPackedDataset,
               evaluate=evaluate_dataset, forward_inputs=model.forward_inputs, init_from_state=model.init_from_state)
SPEC = ModelSpec(name="mindvl", config_cls=config.MindVLConfig, presets=config.PRESETS, serving=convert.SERVING,
                 **_COMMON)
PANGU_SPEC = ModelSpec(name="mindvl_pangu", config_cls=config.MindVLPanguConfig, presets=config.PANGU_PRESETS,
                       serving=convert.PANGU_SERVING, **_COMMON)
