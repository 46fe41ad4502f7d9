"""Synthetic data determinism/splits, LLaVA JSONL round trip and bad-image errors, packing isolation."""

import json

import numpy as np
import pytest

from mindvl.data import (JsonlDataset, SyntheticDataset, build_dataset, collate, encode_example,
                         export_llava_jsonl, pack, packing_efficiency)
from mindvl.processor import ByteTokenizer, ImageProcessor

PROC = ImageProcessor(min_pixels=28 * 28, max_pixels=84 * 84)


def test_synthetic_is_deterministic_with_disjoint_splits_and_varied_sizes():
    a, b = SyntheticDataset(30, "train", seed=1), SyntheticDataset(30, "train", seed=1)
    v = SyntheticDataset(30, "validation", seed=1)
    assert [a[i]["turns"] for i in range(30)] == [b[i]["turns"] for i in range(30)]
    assert np.array_equal(np.asarray(a[4]["images"][0]), np.asarray(b[4]["images"][0]))
    assert not np.array_equal(np.asarray(a[0]["images"][0]), np.asarray(v[0]["images"][0]))
    sizes = {a[i]["images"][0].size for i in range(30)}
    ratios = [w / h for w, h in sizes]
    assert len(sizes) > 20 and min(ratios) < 0.7 and max(ratios) > 1.4
    assert {a[i]["task"] for i in range(30)} == {"caption", "vqa_colour", "vqa_count", "vqa_position", "ocr"}
    ocr = SyntheticDataset(5, "train", tasks=("ocr",))
    assert all(ocr[i]["answer"].isdigit() for i in range(5))


def test_llava_jsonl_round_trip_and_bad_image(tmp_path):
    tk = ByteTokenizer()
    syn = SyntheticDataset(4, "train", seed=2)
    path = export_llava_jsonl(syn, str(tmp_path))
    js = build_dataset(path, "train")
    assert isinstance(js, JsonlDataset) and len(js) == 4
    for i in range(4):
        s1, s2 = encode_example(syn[i], PROC, tk), encode_example(js[i], PROC, tk)
        np.testing.assert_array_equal(s1.ids, s2.ids)
        np.testing.assert_allclose(s1.patches, s2.patches, atol=1e-6)   # PNG is lossless
    (tmp_path / "images" / "train_000002_0.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="train_000002_0.png: cannot decode image"):
        js[2]
    from PIL import Image
    Image.new("RGB", (300, 20)).save(tmp_path / "images" / "train_000003_0.png")
    with pytest.raises(ValueError, match=r"train_000003_0.png: image too small \(300x20 px\)"):
        encode_example(js[3], PROC, tk)
    # a record without '<image>' gets the placeholder in front of its first turn
    rec = {"image": "images/train_000000_0.png", "conversations": [{"from": "human", "value": "Hi?"},
                                                                    {"from": "gpt", "value": "yes"}]}
    (tmp_path / "one.jsonl").write_text(json.dumps(rec) + "\n")
    one = JsonlDataset(str(tmp_path / "one.jsonl"))[0]
    assert one["turns"][0][1].startswith("<image>") and one["answer"] == "yes"


def test_packing_isolates_samples_and_reports_efficiency():
    tk = ByteTokenizer()
    syn = SyntheticDataset(10, "train", seed=4, min_side=40, max_side=100)
    samples = [encode_example(syn[i], PROC, tk) for i in range(10)]
    rows = pack(samples, 640, 256)
    assert sorted(i for r in rows for i in r) == list(range(10)) and len(rows) < 10
    batch = collate(samples, rows, 640, 256, tk)
    for b, row in enumerate(rows):
        seg = batch["segment_ids"][b]
        assert seg.max() == len(row)
        for k in range(1, len(row) + 1):                      # positions restart per sample
            assert batch["mrope_position_ids"][b][:, seg == k][:, 0].tolist() == [0, 0, 0]
        assert batch["loss_mask"][b][seg == 0].sum() == 0
        n_img = int(batch["image_mask"][b].sum())
        assert n_img * 4 == int((batch["vit_segment_ids"][b] > 0).sum())
    eff = packing_efficiency(samples, rows, 640, 256)
    assert 0 < eff["token_efficiency"] <= 1 and 0 < eff["patch_efficiency"] <= 1


def test_jsonl_split_is_deterministic_and_disjoint(tmp_path):
    path = export_llava_jsonl(SyntheticDataset(20, "train", seed=8), str(tmp_path))
    tr = JsonlDataset(path, "train", validation_fraction=0.3)
    va = JsonlDataset(path, "validation", validation_fraction=0.3)
    ids_tr, ids_va = [r["id"] for r in tr.records], [r["id"] for r in va.records]
    assert sorted(ids_tr + ids_va) == list(range(20)) and ids_va and ids_tr
    assert ids_va == [r["id"] for r in JsonlDataset(path, "validation", validation_fraction=0.3).records]


def test_ocr_images_are_fixed_pitch_digit_fields():
    from mindvl.data import OCR_CELL, OCR_DIGITS
    lengths, cells = set(), set()
    for min_side, max_side in ((56, 56), (56, 224)):
        ds = SyntheticDataset(40, "train", seed=3, tasks=("ocr",), min_side=min_side, max_side=max_side)
        for i in range(40):
            ex = ds[i]
            img = np.asarray(ex["images"][0].convert("L"), np.float32)
            c = img.shape[0]
            assert img.shape == (c, c * OCR_DIGITS[1]) and max(OCR_CELL, min_side // 2) <= c <= max_side // 2
            if max_side == 56:
                assert c == OCR_CELL                                      # one digit per merged token
            n = len(ex["answer"])
            lengths.add(n)
            cells.add(c)
            ink = img.reshape(c, OCR_DIGITS[1], c).min(axis=(0, 2))
            assert (ink[:n] < 100).all() and (ink[n:] > 150).all()      # ink only in the first n cells
    assert lengths == set(range(OCR_DIGITS[0], OCR_DIGITS[1] + 1))
    assert len(cells) > 10                                               # many native resolutions


def test_chat_fraction_renders_a_deterministic_share_with_the_chat_template():
    from mindvl.data import TemplateMix
    tk = ByteTokenizer()
    base = SyntheticDataset(400, "train", seed=4, tasks=("vqa_count",))
    mix, again = TemplateMix(base, 0.25, "train"), TemplateMix(base, 0.25, "train")
    chat = [i for i in range(400) if mix[i].get("template") == "chat"]
    assert chat == [i for i in range(400) if again[i].get("template") == "chat"]
    assert 70 <= len(chat) <= 130
    assert not any("template" in TemplateMix(base, 0.0, "train")[i] for i in range(400))
    i, j = chat[0], next(k for k in range(400) if k not in chat)
    assert "<|im_start|>" in tk.decode(encode_example(mix[i], PROC, tk, "plain").ids)
    assert "<|im_start|>" not in tk.decode(encode_example(mix[j], PROC, tk, "plain").ids)


def test_chat_fraction_outside_unit_interval_is_a_one_line_error():
    from mindvl.dataset import MindVLDataConfig
    with pytest.raises(ValueError, match=r"chat_fraction: 1.5 is outside \[0, 1\]"):
        MindVLDataConfig(chat_fraction=1.5).validate()
