"""Vision tower: window order round trip, 2-D RoPE relativity, packed == separate forwards."""

import numpy as np
import pytest
from mindspore import Tensor

from mindvl import layout
from mindvl.config import vision_preset
from mindvl.data import vision_inputs
from mindvl.vision import (VisionTransformer, gather_rows, init_vision_params, to_window_order,
                           vision_rotary_tables)
from ops.rope import apply_rope


def _vit_inputs(grids, max_patches, cfg, pixels):
    idx = vision_inputs([grids], max_patches, cfg.spatial_merge_size, cfg.window_merged)
    pv = np.zeros((1, max_patches, cfg.patch_dim), np.float32)
    pv[0, :pixels.shape[0]] = pixels
    return [Tensor(pv)] + [Tensor(idx[k]) for k in ("vit_position_ids", "vit_segment_ids", "vit_window_ids",
                                                    "window_index", "reverse_window_index")]


def test_window_index_is_a_permutation_with_small_border_windows():
    grids = [(1, 6, 20), (1, 18, 10)]           # merged grids 3×10 and 9×5: windows padded at borders
    widx, wids, iids = layout.window_layout(grids, merge=2, window_merged=4)
    n = 3 * 10 + 9 * 5
    assert sorted(widx.tolist()) == list(range(n))
    # window order = contiguous runs of equal window id, each at most 16 merged tokens
    ordered = wids[widx]
    runs = np.flatnonzero(np.diff(ordered)) + 1
    sizes = np.diff(np.concatenate([[0], runs, [n]]))
    assert (np.diff(ordered) >= 0).all() and sizes.max() == 16
    assert sorted(sizes.tolist()) == sorted([12, 12, 6] + [16, 4, 16, 4, 4, 1])
    assert iids.tolist() == [1] * 30 + [2] * 45


def test_window_reorder_round_trips():
    grids = [(1, 6, 20), (1, 4, 4)]
    idx = vision_inputs([grids], 160, 2, 4)
    x = Tensor(np.random.default_rng(0).normal(size=(1, 160, 3)).astype(np.float32))
    y = to_window_order(x, Tensor(idx["window_index"]), 4)
    assert not np.allclose(y.asnumpy(), x.asnumpy())
    merged = y.reshape(1, 40, 12)                       # whole merge units move together
    back = gather_rows(merged, Tensor(idx["reverse_window_index"])).reshape(1, 160, 3)
    np.testing.assert_array_equal(back.asnumpy(), x.asnumpy())


def test_2d_rope_is_relative():
    rng = np.random.default_rng(1)
    d = 16
    q = Tensor(rng.normal(size=(1, 1, 1, d)).astype(np.float32))
    k = Tensor(rng.normal(size=(1, 1, 1, d)).astype(np.float32))

    def score(pq, pk):
        cq, sq = vision_rotary_tables(Tensor(np.array([[pq]], np.int32)), d, 1e4)
        ck, sk = vision_rotary_tables(Tensor(np.array([[pk]], np.int32)), d, 1e4)
        return float((apply_rope(q, cq, sq, impl="reference") * apply_rope(k, ck, sk, impl="reference")).sum())

    base = score((2, 5), (7, 1))
    assert abs(score((2 + 3, 5 + 11), (7 + 3, 1 + 11)) - base) < 1e-4
    assert abs(score((2 + 4, 5), (7 + 4, 1)) - base) < 1e-4          # rows and columns independently
    assert abs(score((2, 5 + 9), (7, 1 + 9)) - base) < 1e-4
    assert abs(score((2, 5), (8, 1)) - base) > 1e-3                  # but not absolute-blind
    assert abs(score((2, 5), (7, 2)) - base) > 1e-3


@pytest.fixture(scope="module")
def tiny_vit():
    cfg = vision_preset("tiny")               # hidden 32, 2 blocks: block 0 windowed, block 1 full
    vit = VisionTransformer(cfg, attention_impl="reference")
    init_vision_params(vit, 0.2, seed=0)
    return cfg, vit


def test_packed_vit_equals_separate_forwards(tiny_vit):
    cfg, vit = tiny_vit
    rng = np.random.default_rng(2)
    grids = [(1, 4, 6), (1, 12, 10), (1, 2, 2)]      # 56×84, 168×140 (several windows), 28×28
    imgs = [rng.normal(size=(t * h * w, cfg.patch_dim)).astype(np.float32) for t, h, w in grids]
    P = 192
    packed = vit(*_vit_inputs(grids, P, cfg, np.concatenate(imgs))).asnumpy()[0]
    off = 0
    for g, im in zip(grids, imgs):
        alone = vit(*_vit_inputs([g], P, cfg, im)).asnumpy()[0]
        m = im.shape[0] // 4
        np.testing.assert_allclose(packed[off:off + m], alone[:m], atol=1e-5, rtol=1e-5)
        off += m
    assert off == 24 // 4 + 120 // 4 + 1
    assert np.isfinite(packed).all()


def test_window_blocks_only_mix_within_a_window():
    cfg = vision_preset("tiny")
    cfg.fullatt_block_indexes = ()            # both blocks windowed
    vit = VisionTransformer(cfg, attention_impl="reference")
    init_vision_params(vit, 0.2, seed=1)
    grid = (1, 16, 8)                          # merged 8×4: windows = top 4×4 and bottom 4×4
    x = np.random.default_rng(3).normal(size=(128, cfg.patch_dim)).astype(np.float32)
    a = vit(*_vit_inputs([grid], 128, cfg, x)).asnumpy()[0]
    x2 = x.copy()
    x2[-4:] += 1.0                             # last merge unit: bottom window
    b = vit(*_vit_inputs([grid], 128, cfg, x2)).asnumpy()[0]
    changed = np.abs(a - b).max(-1) > 1e-6    # merged tokens in raster order (8 rows × 4 cols)
    assert changed.reshape(8, 4)[4:].all() and not changed.reshape(8, 4)[:4].any()


def test_vit_fast_attention_matches_reference():
    from ops.attention import fast_available
    if not fast_available():
        pytest.skip("ops.attention fast CPU kernel not built on this machine")
    cfg = vision_preset("tiny")
    grids = [(1, 4, 6), (1, 12, 10)]
    x = np.random.default_rng(0).normal(size=(144, cfg.patch_dim)).astype(np.float32)
    outs = []
    for impl in ("reference", "fast"):
        vit = VisionTransformer(cfg, attention_impl=impl)
        init_vision_params(vit, 0.2, seed=0)
        outs.append(vit(*_vit_inputs(grids, 160, cfg, x)).asnumpy()[0, :36])
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5, rtol=1e-5)
