"""MindVL: native-resolution vision encoder + patch merger + a pangu decoder (Qwen2.5-VL-style layout).

Modules: config (dataclasses + presets), processor (resize/patchify/chat template), layout (numpy index
maths: ViT rotary positions, window order, M-RoPE positions), vision (ViT + merger cells), model (MindVL),
data (synthetic + LLaVA JSONL datasets, packing, collation), dataset (the trainer's packed dataset),
evaluate (exact-match accuracy, test-time resolution search), convert (serving layout), spec (ModelSpec).
"""

from mindvl.config import PRESETS, MindVLConfig, MindVLPanguConfig, VisionConfig, count_parameters  # noqa: E402
from mindvl.dataset import MindVLDataConfig, MultimodalPackedDataset  # noqa: E402
from mindvl.model import MindVL, build_model  # noqa: E402
from mindvl.spec import PANGU_SPEC, SPEC  # noqa: E402
