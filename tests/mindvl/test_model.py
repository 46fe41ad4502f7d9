"""Full MindVL (tiny ViT + tiny Pangu Pro MoE decoder): M-RoPE tables, packed == separate, loss masks."""

import numpy as np
import pytest
from mindspore import Tensor

from mindvl.config import PANGU_PRESETS, PRESETS
from mindvl.data import SyntheticDataset, collate, encode_example, pack, packing_efficiency
from mindvl.model import MindVL, batch_args, build_model, mrope_tables
from mindvl.processor import ByteTokenizer, ImageProcessor
from ops.rope import rotary_tables

SEQ, PATCHES = 320, 224


def test_mrope_equals_plain_rope_for_text():
    pos = np.arange(12, dtype=np.int32)[None] + 3
    c1, s1 = mrope_tables(Tensor(np.repeat(pos[:, None], 3, 1)), 16, 1e4, (2, 3, 3))
    c2, s2 = rotary_tables(Tensor(pos), 16, 1e4)
    np.testing.assert_allclose(c1.asnumpy(), c2.asnumpy(), atol=1e-6)
    np.testing.assert_allclose(s1.asnumpy(), s2.asnumpy(), atol=1e-6)


@pytest.fixture(scope="module")
def setup():
    tk = ByteTokenizer()
    proc = ImageProcessor(min_pixels=28 * 28, max_pixels=84 * 84)
    ds = SyntheticDataset(6, "train", seed=3, min_side=40, max_side=100)
    samples = [encode_example(ds[i], proc, tk, template="plain") for i in range(len(ds))]
    model = build_model(PRESETS["tiny"](), seed=0, attention_impl="reference")
    return tk, samples, model


def test_packed_model_equals_separate_forwards(setup):
    tk, samples, model = setup
    samples = samples[:3]
    rows = pack(samples, SEQ, PATCHES)
    assert len(rows) == 1 and rows[0] == [0, 1, 2]
    packed = model(*batch_args(model, collate(samples, rows, SEQ, PATCHES, tk))).asnumpy()[0]
    off = 0
    for i, s in enumerate(samples):
        alone = model(*batch_args(model, collate(samples, [[i]], SEQ, PATCHES, tk))).asnumpy()[0]
        L = len(s.ids)
        np.testing.assert_allclose(packed[off:off + L], alone[:L], atol=1e-5, rtol=1e-5)
        off += L


def test_loss_is_finite_and_answer_only(setup):
    tk, samples, model = setup
    rows = pack(samples, SEQ, PATCHES)
    batch = collate(samples, rows, SEQ, PATCHES, tk)
    # every target is a text token of an answer; image tokens are never targets
    targets = batch["labels"][batch["loss_mask"] > 0]
    assert not np.isin(targets, [tk.token_id("<|image_pad|>"), tk.pad_id]).any()
    total, (lm, aux, imb) = model.loss(*batch_args(model, batch, model.BATCH_KEYS))
    assert np.isfinite(float(total.asnumpy())) and abs(float(lm.asnumpy()) - np.log(512)) < 1.0
    eff_p = packing_efficiency(samples, rows, SEQ, PATCHES)["token_efficiency"]
    eff_u = packing_efficiency(samples, pack(samples, SEQ, PATCHES, packed=False), SEQ, PATCHES)["token_efficiency"]
    assert eff_p > 1.5 * eff_u


def test_image_features_reach_the_text_after_the_image(setup):
    tk, samples, model = setup
    batch = collate(samples[:1], [[0]], SEQ, PATCHES, tk)
    base = model(*batch_args(model, batch)).asnumpy()[0]
    batch["pixel_values"] = batch["pixel_values"] + 0.5
    moved = model(*batch_args(model, batch)).asnumpy()[0]
    first_img = int(np.argmax(batch["image_mask"][0]))
    L = len(samples[0].ids)
    assert np.allclose(base[:first_img], moved[:first_img], atol=1e-6)    # causal: text before unaffected
    assert np.abs(base[first_img:L] - moved[first_img:L]).max() > 1e-4


def test_rows_of_a_batch_are_independent(setup):
    """Per-row gathers (window order, image features) must not mix rows: B=2 == two B=1 forwards."""
    tk, samples, model = setup
    rows = [[0, 1], [2, 3]]
    both = model(*batch_args(model, collate(samples, rows, SEQ, PATCHES, tk))).asnumpy()
    for b, row in enumerate(rows):
        alone = model(*batch_args(model, collate(samples, [row], SEQ, PATCHES, tk))).asnumpy()[0]
        np.testing.assert_allclose(both[b], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("text_arch", ["pangu_pro_moe", "pangu_ultra_moe"])
def test_pangu_decoders_plug_in_as_mindvl_pangu(setup, text_arch):
    """mindvl_pangu: a Pangu MoE decoder (Ultra with interleaved M-RoPE on its rope dims)."""
    tk, samples, _ = setup
    cfg = PANGU_PRESETS["tiny"]()
    cfg.text_arch, cfg.text_overrides = text_arch, ({"num_mtp_layers": 0} if text_arch == "pangu_ultra_moe" else {})
    model = build_model(cfg, seed=0, attention_impl="reference")
    assert model.rope_layout == ("interleaved" if text_arch == "pangu_ultra_moe" else "rotate_half")
    assert sum(model.mrope_section) == model.rope_dim // 2
    sub = samples[:2]
    packed = model(*batch_args(model, collate(sub, [[0, 1]], SEQ, PATCHES, tk))).asnumpy()[0]
    off = 0
    for i, s in enumerate(sub):
        alone = model(*batch_args(model, collate(sub, [[i]], SEQ, PATCHES, tk))).asnumpy()[0]
        np.testing.assert_allclose(packed[off:off + len(s.ids)], alone[:len(s.ids)], atol=1e-5, rtol=1e-5)
        off += len(s.ids)
    total, metrics = model.loss(*batch_args(model, collate(sub, [[0, 1]], SEQ, PATCHES, tk), model.BATCH_KEYS))
    assert np.isfinite(float(total.asnumpy())) and len(metrics) == len(MindVL.METRIC_NAMES)


def test_fast_ops_train_like_reference_ops(setup):
    """Every op on its CPU fast path vs every op on its reference: same loss over 2 SGD steps (1e-5)."""
    import dataclasses

    import mindspore as ms
    from mindspore import nn

    tk, samples, _ = setup
    batch = collate(samples, pack(samples, SEQ, PATCHES), SEQ, PATCHES, tk)
    losses = {}
    for impl in ("fast", "reference"):
        cfg = dataclasses.replace(PRESETS["tiny"](), text_overrides={"ops_impl": impl})
        model = build_model(cfg, seed=0, attention_impl=impl)
        opt = nn.SGD(model.trainable_params(), learning_rate=0.1)
        grad_fn = ms.value_and_grad(lambda *b: model.loss(*b)[0], None, opt.parameters)
        args = batch_args(model, batch, model.BATCH_KEYS)
        out = []
        for _ in range(2):
            loss, grads = grad_fn(*args)
            opt(grads)
            out.append(float(loss.asnumpy()))
        out.append(float(model.loss(*args)[0].asnumpy()))
        losses[impl] = out
    assert losses["fast"][-1] < losses["fast"][0]
    np.testing.assert_allclose(losses["fast"], losses["reference"], rtol=1e-5)
