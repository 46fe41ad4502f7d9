"""Index maths for MindVL, in numpy (run by the data pipeline, so the jitted model sees fixed shapes).

Legend: P = patches, M = merged tokens (P / merge**2), S = LLM tokens, grid_thw = (t, h, w) in patches.

Patch order ("merge order", what the processor emits and serving expects): for each temporal slice,
the merged grid in raster order, and inside each merged token its merge×merge patches in raster order.
So patches 4k..4k+3 are merged token k (merge = 2). Merged tokens are in raster order of the merged
grid (llm_h = h / merge rows, llm_w = w / merge columns).

Window order: the merged grid is cut into windows of `window_merged`×`window_merged` merged tokens
(4×4 = 8×8 patches for window_size 112, patch 14, merge 2), the last row/column of windows padded
(padding is dropped, so border windows are smaller); windows are visited in raster order and tokens
inside a window in raster order. `window_index[k]` = merged-token index (merge order) of the k-th
token in window order; `reverse_index` = argsort(window_index) undoes it.
"""

from __future__ import annotations

import numpy as np


def check_grid(grid_thw, merge: int) -> np.ndarray:
    """Return grid_thw as an int64 [n, 3] array; assert h, w are multiples of merge."""
    g = np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)
    assert (g[:, 1] % merge == 0).all() and (g[:, 2] % merge == 0).all(), g
    return g


def vit_rotary_positions(grid_thw, merge: int = 2) -> np.ndarray:
    """[P, 2] (row, col) patch coordinates in merge order, images concatenated."""
    out = []
    for t, h, w in check_grid(grid_thw, merge):
        hpos = np.broadcast_to(np.arange(h)[:, None], (h, w))
        wpos = np.broadcast_to(np.arange(w)[None, :], (h, w))
        def to_merge_order(a):
            return a.reshape(h // merge, merge, w // merge, merge).transpose(0, 2, 1, 3).reshape(-1)
        hw = np.stack([to_merge_order(hpos), to_merge_order(wpos)], axis=-1)
        out.append(np.tile(hw, (t, 1)))
    return np.concatenate(out, axis=0).astype(np.int32) if out else np.zeros((0, 2), np.int32)


def window_layout(grid_thw, merge: int = 2, window_merged: int = 4):
    """Window order for the concatenated images of `grid_thw`.

    Returns (window_index [M] int32, window_ids [M] int32 1-based and unique across images,
    image_ids [M] int32 1-based) — ids in merge order (index them with window_index to get
    window order).
    """
    window_index, window_ids, image_ids = [], [], []
    offset, next_window = 0, 1
    for img, (t, h, w) in enumerate(check_grid(grid_thw, merge)):
        lh, lw = h // merge, w // merge
        idx = np.arange(t * lh * lw).reshape(t, lh, lw)
        nwh, nww = -(-lh // window_merged), -(-lw // window_merged)
        padded = np.full((t, nwh * window_merged, nww * window_merged), -1, dtype=np.int64)
        padded[:, :lh, :lw] = idx
        win = padded.reshape(t, nwh, window_merged, nww, window_merged).transpose(0, 1, 3, 2, 4)
        win = win.reshape(t * nwh * nww, window_merged * window_merged)
        ids = np.zeros(t * lh * lw, dtype=np.int64)
        for row in win:
            real = row[row >= 0]
            if real.size:
                window_index.append(real + offset)
                ids[real] = next_window
                next_window += 1
        window_ids.append(ids)
        image_ids.append(np.full(t * lh * lw, img + 1))
        offset += t * lh * lw
    if not window_index:
        z = np.zeros(0, np.int32)
        return z, z, z
    return (np.concatenate(window_index).astype(np.int32), np.concatenate(window_ids).astype(np.int32),
            np.concatenate(image_ids).astype(np.int32))


def mrope_positions(input_ids, grid_thw, image_token_id: int, merge: int = 2) -> np.ndarray:
    """3-D M-RoPE positions [3, S] (temporal, height, width) for one sample, Qwen2-VL get_rope_index.

    Text tokens get the same value in all three streams, counting on from the previous maximum + 1.
    A run of image tokens for an image of llm grid (T, H, W) = (t, h/merge, w/merge) starting at
    position s gets (s + ti, s + hi, s + wi); text after it resumes at s + max(T, H, W)
    (= start + max(h, w)/2 in patches for a single-frame image). Image runs must appear in the
    order of grid_thw and have exactly T·H·W tokens.
    """
    ids = np.asarray(input_ids).reshape(-1)
    grids = check_grid(grid_thw, merge) if len(grid_thw) else np.zeros((0, 3), np.int64)
    pos = np.zeros((3, ids.size), dtype=np.int64)
    i, nxt, img = 0, 0, 0
    while i < ids.size:
        if ids[i] != image_token_id:
            pos[:, i] = nxt
            nxt += 1
            i += 1
            continue
        assert img < len(grids), "more image runs than grid_thw entries"
        t, h, w = grids[img]
        lt, lh, lw = int(t), int(h) // merge, int(w) // merge
        n = lt * lh * lw
        assert (ids[i:i + n] == image_token_id).all() and (i + n == ids.size or ids[i + n] != image_token_id), \
            f"image {img}: expected a run of {n} image tokens"
        ti, hi, wi = np.meshgrid(np.arange(lt), np.arange(lh), np.arange(lw), indexing="ij")
        pos[:, i:i + n] = np.stack([ti.reshape(-1), hi.reshape(-1), wi.reshape(-1)]) + nxt
        nxt += max(lt, lh, lw)
        i += n
        img += 1
    assert img == len(grids), "fewer image runs than grid_thw entries"
    return pos.astype(np.int32)


def num_image_tokens(grid_thw_row, merge: int = 2) -> int:
    t, h, w = (int(v) for v in grid_thw_row)
    return t * h * w // (merge * merge)
