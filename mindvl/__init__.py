"""MindVL: native-resolution vision encoder + patch merger + a pangu decoder (Qwen2.5-VL-style layout).

Modules: config (dataclasses + presets), processor (resize/patchify/chat template), layout (numpy index
maths: ViT rotary positions, window order, M-RoPE positions), vision (ViT + merger cells), model (MindVL),
data (synthetic + LLaVA JSONL datasets, packing, collation), resolution_search.
"""

from mindvl.config import PRESETS, MindVLConfig, VisionConfig, count_parameters  # noqa: E402
from mindvl.model import MindVL, build_model  # noqa: E402

from mindvl.dataset import MindVLDataConfig, MultimodalPackedDataset  # noqa: E402


def evaluate_dataset(model, dataset) -> dict:
    """`mindvl.evaluate.evaluate_dataset`, imported on first use: importing mindvl.evaluate here would
    make `python -m mindvl.evaluate` warn that the module was imported before it ran."""
    from mindvl.evaluate import evaluate_dataset as evaluate
    return evaluate(model, dataset)


# pangu.registry spec ("mindvl" is in its _BUILTIN): `model.arch: mindvl` builds this model, the
# recipe's `data:` section is a MindVLDataConfig, the trainer reads MultimodalPackedDataset rows and
# logs exact-match validation accuracy at every evaluation.
ARCH_SPEC = dict(config_cls=MindVLConfig, presets=PRESETS, model_cls=MindVL, build_model=build_model,
                 count_parameters=count_parameters, convert_module="mindvl.convert",
                 data_config_cls=MindVLDataConfig, build_dataset=MultimodalPackedDataset,
                 evaluate=evaluate_dataset)
