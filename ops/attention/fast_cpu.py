"""FastAttention on CPU: tiled online-softmax attention as a MindSpore aot custom op with its own bprop.

Shapes: q_BNSD [B, N, S, Dqk], k_BKSD [B, Nkv, S, Dqk], v_BKSE [B, Nkv, S, Dv], seg_BS [B, S] int32,
out_BNSE [B, N, S, Dv], lse_BNS [B, N, S] (log-sum-exp of the scaled scores, saved for the backward).

The kernel lives in csrc/fast_attention.cc (see its header for the algorithm); `build.py` compiles it
on first import if the up-to-date .so is missing. Works in PyNative and GRAPH mode (`ms.jit`),
forward and backward, float32 (other float dtypes are computed in float32 and cast back).
"""
import mindspore as ms
from mindspore import ops

from ops.attention import build as _build

DEFAULT_BLOCK_Q = 64
DEFAULT_BLOCK_K = 64

_LIB = str(_build.ensure_built())


def _fwd_shape(q, k, v, seg, cfg):
    return (list(q[:3]) + [v[3]], list(q[:3]))


def _fwd_dtype(q, k, v, seg, cfg):
    return (q, q)


def _bwd_shape(q, k, v, seg, cfg, out, lse, dout):
    return (q, k, v)


def _bwd_dtype(q, k, v, seg, cfg, out, lse, dout):
    return (q, k, v)


_BWD = ops.Custom(f"{_LIB}:FastAttnBwd", out_shape=_bwd_shape, out_dtype=_bwd_dtype, func_type="aot")


def _fwd_bprop(q, k, v, seg, cfg, out, dout):
    """FlashAttention-2 backward from the saved (out, lse); the lse cotangent is ignored because
    `fast_attention` never exposes lse. seg / cfg are integer ids / constants: zero gradient."""
    dq, dk, dv = _BWD(q, k, v, seg, cfg, out[0], out[1], dout[0])
    return dq, dk, dv, ops.zeros_like(seg), ops.zeros_like(cfg)


_FWD = ops.Custom(f"{_LIB}:FastAttnFwd", out_shape=_fwd_shape, out_dtype=_fwd_dtype, func_type="aot",
                  bprop=_fwd_bprop)


def library_path() -> str:
    """Path of the loaded kernel library."""
    return _LIB


def fast_attention_with_lse(q, k, v, segment_ids=None, causal=True, scale=None,
                            block_q=DEFAULT_BLOCK_Q, block_k=DEFAULT_BLOCK_K):
    """Like `fast_attention` but also returns lse [B, N, S] (fp32, +inf on fully masked rows).

    Gradients flow only through `out`; the lse output is treated as a constant by the bprop.
    """
    B, N, S, Dqk = q.shape
    if k.shape[1] == 0 or N % k.shape[1] != 0:
        raise ValueError(f"q/k heads: N={N} is not a multiple of Nkv={k.shape[1]}; use N % Nkv == 0")
    if k.shape[2] != S or v.shape[2] != S or k.shape[3] != Dqk:
        raise ValueError(f"q/k/v shapes {q.shape}/{k.shape}/{v.shape}: need k [B,Nkv,S,Dqk], v [B,Nkv,S,Dv]")
    if scale is None:
        scale = Dqk ** -0.5
    if segment_ids is None:
        segment_ids = ops.ones((B, S), ms.int32)
    else:
        segment_ids = ops.cast(segment_ids, ms.int32)
    dtype = q.dtype
    if dtype != ms.float32:
        q, k, v = ops.cast(q, ms.float32), ops.cast(k, ms.float32), ops.cast(v, ms.float32)
    cfg = ms.Tensor([1.0 if causal else 0.0, float(scale), float(block_q), float(block_k)], ms.float32)
    out, lse = _FWD(q, k, v, segment_ids, cfg)
    if dtype != ms.float32:
        out = ops.cast(out, dtype)
    return out, lse


def fast_attention(q, k, v, segment_ids=None, causal=True, scale=None,
                   block_q=DEFAULT_BLOCK_Q, block_k=DEFAULT_BLOCK_K):
    """Attention out [B, N, S, Dv] = softmax(scale * q k^T + mask) v, never materialising S x S.

    q [B, N, S, Dqk], k [B, Nkv, S, Dqk], v [B, Nkv, S, Dv] with N % Nkv == 0 (GQA); segment_ids
    [B, S] int (equal non-zero ids attend to each other; 0 = padding; None = one document);
    scale defaults to Dqk ** -0.5. Fully masked rows return 0. block_q / block_k are the outer tile
    sizes (query rows x keys per tile).
    """
    return fast_attention_with_lse(q, k, v, segment_ids, causal, scale, block_q, block_k)[0]


def is_available() -> bool:
    """True: importing this module already built/loaded the kernel (an import error means False)."""
    return True


# Name the dispatcher in ops/attention/__init__.py calls: attention(q, k, v, segment_ids, causal, scale).
attention = fast_attention
