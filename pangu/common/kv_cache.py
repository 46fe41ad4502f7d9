"""KV-cache building blocks shared by the attention layers (GQA, MLA) and `pangu.generate`.

Legend: B rows, N query heads, Nkv cached heads, T cache columns, D head dim.

A cache has a fixed capacity of T columns per row; a decoded token is written into its column with a
one-hot blend and attends over the columns marked valid. Several new columns per row (S > 1: the
speculative verification pass of pangu.speculative) pass index_BS [B, S] instead of index_B and a
per-query mask valid_BST = `chunk_mask(...)` instead of valid_BT: query s then sees the valid columns up
to its own, so S tokens decode in one pass exactly as S single steps would. Everything is MindSpore ops with static
shapes and no function-local imports, so a model's `decode_step` built from them compiles once with
`ms.jit` (GRAPH mode) and runs on CPU and Ascend alike.
"""
import mindspore as ms
from mindspore import ops


def kv_cache_write(cache_BNTD, new_BN1D, index_B):
    """`cache` with column index_B[b] of row b replaced by new_BN1D[b] (a one-hot blend); with index_BS
    [B, S] and new_BNSD, columns index_BS[b, s] get new_BNSD[b, :, s] (distinct columns per row)."""
    t = cache_BNTD.shape[2]
    if len(index_B.shape) == 2:
        onehot_BST = ops.equal(ops.arange(t, dtype=ms.int32)[None, None, :],
                               index_B.astype(ms.int32)[:, :, None]).astype(cache_BNTD.dtype)
        written_BT = onehot_BST.sum(1)[:, None, :, None]
        scattered = ops.matmul(onehot_BST.swapaxes(1, 2)[:, None], new_BN1D.astype(cache_BNTD.dtype))
        return cache_BNTD * (1 - written_BT) + scattered
    onehot_BT = ops.equal(ops.arange(t, dtype=ms.int32)[None, :], index_B.astype(ms.int32)[:, None])
    onehot = onehot_BT[:, None, :, None].astype(cache_BNTD.dtype)
    return cache_BNTD * (1 - onehot) + new_BN1D * onehot


def mark_valid(valid_BT, index_B):
    """valid_BT with column index_B[b] of row b set to 1 (a decoded token's own column)."""
    onehot_BT = ops.equal(ops.arange(valid_BT.shape[1], dtype=ms.int32)[None, :],
                          index_B.astype(ms.int32)[:, None])
    return ops.maximum(valid_BT, onehot_BT.astype(valid_BT.dtype))


def mark_valid_columns(valid_BT, index_BS):
    """valid_BT with columns index_BS[b, :] of row b set to 1 (a chunk of new columns)."""
    onehot_BST = ops.equal(ops.arange(valid_BT.shape[1], dtype=ms.int32)[None, None, :],
                           index_BS.astype(ms.int32)[:, :, None])
    return ops.maximum(valid_BT, onehot_BST.astype(valid_BT.dtype).sum(1).clip(0, 1))


def chunk_mask(valid_BT, index_BS):
    """Per-query mask [B, S, T] of a chunk: valid columns up to and including the query's own."""
    t = valid_BT.shape[1]
    causal_BST = ops.arange(t, dtype=ms.int32)[None, None, :] <= index_BS.astype(ms.int32)[:, :, None]
    return ops.logical_and(valid_BT[:, None, :] != 0, causal_BST).astype(ms.int32)


def decode_attention(q_BN1D, k_BNTD, v_BNTD, valid_BT, scale=None):
    """One query per row over the cached columns where valid_BT != 0 (GQA: N % Nkv == 0) -> [B,N,1,Dv];
    S queries per row with a per-query mask valid_BST [B, S, T] (`chunk_mask`) -> [B,N,S,Dv]."""
    b, n, _, d = q_BN1D.shape
    nkv = k_BNTD.shape[1]
    if n != nkv:
        k_BNTD = ops.repeat_interleave(k_BNTD, n // nkv, 1)
        v_BNTD = ops.repeat_interleave(v_BNTD, n // nkv, 1)
    scale = d ** -0.5 if scale is None else scale
    scores = ops.matmul(q_BN1D.astype(ms.float32), k_BNTD.astype(ms.float32).swapaxes(-1, -2)) * scale
    mask = (valid_BT != 0)[:, None] if len(valid_BT.shape) == 3 else (valid_BT != 0)[:, None, None, :]
    scores = ops.where(mask, scores, ops.full_like(scores, -1e30))
    probs = ops.softmax(scores, -1)
    return ops.matmul(probs, v_BNTD.astype(ms.float32)).astype(q_BN1D.dtype)
