"""Trainer-facing pieces: packed multimodal dataset interface, parameter count, registry spec,
and a warm-up step (ViT + LLM frozen by name pattern) that leaves frozen weights bit-identical."""

import re

import numpy as np
import mindspore as ms

import mindvl
from mindvl.config import PRESETS, count_parameters
from mindvl.dataset import MindVLDataConfig, MultimodalPackedDataset
from mindvl.model import MindVL, build_model
import models

CFG = dict(num_samples=12, num_val_samples=5, seq_length=384, max_patches=256, max_pixels=84 * 84,
           min_pixels=28 * 28, min_side=40, max_side=120)


def test_dataset_interface_and_packing_report():
    ds = MultimodalPackedDataset(MindVLDataConfig(**CFG), "train")
    st = ds.packing_stats()
    assert st["num_samples"] == 12 and st["rows"] == ds.num_rows < 12
    assert st["token_efficiency"] > 2 * st["unpacked"]["token_efficiency"]
    b1 = next(ds.batches(2, start=3, seed=7))
    b2 = next(ds.batches(2, start=3, seed=7))
    assert set(MindVL.BATCH_KEYS) <= set(b1)
    for k in b1:
        np.testing.assert_array_equal(b1[k], b2[k])          # deterministic, resumable by position
    assert b1["input_ids"].shape == (2, 384) and b1["pixel_values"].shape == (2, 256, 1176)
    val = MultimodalPackedDataset(MindVLDataConfig(**CFG), "val")
    batches = list(val.eval_batches(4))
    assert sum(int((b["segment_ids"].max(1) > 0).sum()) for b in batches) == val.num_rows
    assert batches[-1]["pixel_values"].shape == (4, 256, 1176)


def test_count_parameters_matches_model_and_registry_spec():
    cfg = PRESETS["tiny"]()
    model = MindVL(cfg, attention_impl="reference")
    real = sum(int(np.prod(p.shape)) for p in model.get_parameters())
    assert count_parameters(cfg)[0] == real
    assert models.get_spec("mindvl") is mindvl.SPEC
    c = models.get_config("mindvl", "tiny", vocab_size=300)
    assert c.text_config().vocab_size == 300
    assert models.count_parameters(c)[0] < real           # smaller vocab


def test_warmup_step_trains_merger_only():
    from recipes.engine.config import OptimizerConfig
    from recipes.engine.optim import AdamW
    from mindspore import Tensor

    cfg = PRESETS["tiny"]()
    cfg.text_overrides = {"attention_impl": "reference"}
    model = build_model(cfg, seed=0, attention_impl="reference")
    freeze = [re.compile(r"^visual\.(patch_embed|blocks)\."), re.compile(r"^language_model\.")]
    for p in model.get_parameters():
        if any(r.search(p.name) for r in freeze):
            p.requires_grad = False
    params = [p for p in model.get_parameters() if p.requires_grad]
    assert params and all(p.name.startswith("visual.merger.") for p in params)
    before = {p.name: p.asnumpy().copy() for p in model.get_parameters()}
    opt = AdamW(params, OptimizerConfig(lr=1e-2))

    def forward(*batch):
        return model.loss(*batch)

    grad_fn = ms.value_and_grad(forward, None, opt.params, has_aux=True)
    ds = MultimodalPackedDataset(MindVLDataConfig(**CFG), "train")
    losses = []
    for batch in ds.batches(2, num_batches=3):
        (loss, _), grads = grad_fn(*(Tensor(batch[k]) for k in MindVL.BATCH_KEYS))
        opt(grads, Tensor(1e-2, ms.float32))
        losses.append(float(loss.asnumpy()))
    assert all(np.isfinite(losses))
    for p in model.get_parameters():
        same = np.array_equal(before[p.name], p.asnumpy())
        assert same == (not p.requires_grad), p.name
