"""Processor: smart_resize, patch layout, grid_thw for odd sizes, bad-image errors, chat template, M-RoPE."""

import json

import numpy as np
import pytest
from PIL import Image

from mindvl import layout
from mindvl.processor import ByteTokenizer, ImageProcessor, render_conversation, smart_resize


@pytest.mark.parametrize("h,w", [(57, 85), (29, 301), (101, 33), (56, 84), (1000, 1333), (28, 28)])
def test_smart_resize_multiples_and_budget(h, w):
    H, W = smart_resize(h, w, 28, 56 * 56, 224 * 224)
    assert H % 28 == 0 and W % 28 == 0
    assert 56 * 56 <= H * W <= 224 * 224
    # aspect ratio kept up to rounding each resized side to 28 px
    assert abs(np.log((H / W) / (h / w))) < np.log((H + 28) / H) + np.log((W + 28) / W)


@pytest.mark.parametrize("h,w", [(57, 85), (29, 301), (101, 33)])
def test_processor_shapes_and_grid_for_odd_sizes(h, w):
    proc = ImageProcessor(min_pixels=56 * 56, max_pixels=224 * 224)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    patches, (t, gh, gw) = proc(img)
    H, W = smart_resize(h, w, 28, 56 * 56, 224 * 224)
    assert (t, gh, gw) == (1, H // 14, W // 14)
    assert patches.shape == (gh * gw, 3 * 2 * 14 * 14) and patches.dtype == np.float32
    assert layout.num_image_tokens((t, gh, gw)) == gh * gw // 4


def test_patchify_layout_matches_conv3d_and_merge_order():
    proc = ImageProcessor()
    frames = np.random.default_rng(1).normal(size=(1, 3, 56, 84)).astype(np.float32)
    patches, (t, gh, gw) = proc.patchify(frames)
    assert (t, gh, gw) == (1, 4, 6)
    x = patches.reshape(-1, 3, 2, 14, 14)
    np.testing.assert_array_equal(x[:, :, 0], x[:, :, 1])            # still image: frame repeated
    pos = layout.vit_rotary_positions([(t, gh, gw)])
    for k in range(len(pos)):                                          # patch k covers (row, col) in pos
        r, c = pos[k]
        np.testing.assert_array_equal(x[k, :, 0], frames[0, :, r * 14:(r + 1) * 14, c * 14:(c + 1) * 14])
    # first merge unit = the top-left 2×2 patches
    assert pos[:4].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]


def test_bad_images_raise_one_line_errors(tmp_path):
    proc = ImageProcessor()
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    small = tmp_path / "small.png"
    Image.new("RGB", (20, 300)).save(small)
    for path, words in [(corrupt, "cannot decode"), (empty, "empty"), (small, "too small"),
                        (tmp_path / "missing.png", "not found")]:
        with pytest.raises(ValueError) as e:
            proc(str(path))
        msg = str(e.value)
        assert str(path) in msg and words in msg and "\n" not in msg and ";" in msg


def test_preprocessor_config_round_trip(tmp_path):
    proc = ImageProcessor(min_pixels=3136, max_pixels=112 * 112, extra={"chosen_by": "test"})
    path = proc.save(str(tmp_path))
    d = json.load(open(path))
    assert d["max_pixels"] == 112 * 112 and d["patch_size"] == 14 and d["merge_size"] == 2
    assert ImageProcessor.load(str(tmp_path)) == proc


def test_chat_template_answer_only_mask():
    tk = ByteTokenizer()
    ids, tgt = render_conversation(tk, [("user", "<image>\nWhat colour?"), ("assistant", "red")], [6])
    text = tk.decode(ids)
    assert text.count("<|image_pad|>") == 6 and "<|vision_start|>" in text and text.endswith("<eod>")
    assert tk.decode(ids[tgt]) == "red<|im_end|><eod>"
    with pytest.raises(ValueError, match="placeholder"):
        render_conversation(tk, [("user", "no image here"), ("assistant", "x")], [4])


def test_mrope_positions_follow_qwen_get_rope_index():
    img = 9
    ids = [1, 2, 3] + [img] * 6 + [4, 5]          # image grid (1, 4, 6) -> llm grid 1×2×3 = 6 tokens
    pos = layout.mrope_positions(ids, [(1, 4, 6)], img)
    assert pos[:, :3].tolist() == [[0, 1, 2]] * 3
    assert pos[0, 3:9].tolist() == [3] * 6                          # temporal constant for an image
    assert pos[1, 3:9].tolist() == [3, 3, 3, 4, 4, 4]               # rows
    assert pos[2, 3:9].tolist() == [3, 4, 5, 3, 4, 5]               # columns
    assert pos[:, 9:].tolist() == [[6, 7]] * 3                      # resumes at start + max(h, w)/2 = 3 + 3
    text_only = layout.mrope_positions([5, 6, 7], [], img)
    assert text_only.tolist() == [[0, 1, 2]] * 3
