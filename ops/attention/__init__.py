"""Attention op: one dispatcher over the reference, the CPU FastAttention kernel and Ascend's fused op.

`attention(q, k, v, segment_ids=None, *, causal=True, scale=None, impl="auto")`
  q [B, N, S, Dqk], k [B, Nkv, S, Dqk], v [B, Nkv, S, Dv] -> [B, N, S, Dv] in q's dtype.

impl:
  "reference": explicit-mask softmax (reference.py).
  "fast":      tiled online-softmax custom op `ops.attention.fast_cpu.fast_attention(q, k, v,
               segment_ids, causal, scale)`, imported lazily (`ops._dispatch.FastPath`); if it
               cannot be built/used, "fast" falls back to "reference" with a warning.
  "ascend":    flash_attention_score (Ascend only).
  "auto":      ascend on Ascend, else fast if importable/built, else reference.

GRAPH mode: resolve the impl once outside the graph (`resolve_impl`, done by the model at
build time) and pass the concrete name.
"""
from ops._dispatch import FastPath
from ops.attention import reference as _ref

__all__ = ["attention", "resolve_impl", "fast_available"]

FAST = FastPath("attention", "ops.attention.fast_cpu", ("fast_attention",))
fast_available = FAST.available   # build/load the CPU kernel on first use; True when usable
resolve_impl = FAST.resolve       # concrete impl for this device: "reference" | "fast" | "ascend"


def _ascend_attention(q, k, v, segment_ids, causal, scale):
    """flash_attention_score in BNSD layout; masks built by the reference helper (1 = masked)."""
    from mindspore import ops
    import mindspore as ms
    n, s, dqk = q.shape[1], q.shape[2], q.shape[3]
    if scale is None:
        scale = dqk ** -0.5
    mask = _ref.build_mask(segment_ids, s, causal)
    attn_mask = None if mask is None else ops.logical_not(mask).astype(ms.uint8)
    out = ops.flash_attention_score(q, k, v, n, attn_mask=attn_mask, scalar_value=scale,
                                    input_layout="BNSD")
    return out


def attention(q, k, v, segment_ids=None, *, causal=True, scale=None, impl="auto"):
    """Scaled dot-product attention with causal + document masking (see module doc)."""
    # Concrete names first: inside a GRAPH-mode construct only these branches may be parsed
    # (resolve_impl's lazy import uses try/except, which the graph compiler rejects).
    if impl == "reference":
        return _ref.attention(q, k, v, segment_ids, causal, scale)
    if impl == "ascend":
        return _ascend_attention(q, k, v, segment_ids, causal, scale)
    if impl == "fast" and FAST.ready:
        return FAST.fast_attention(q, k, v, segment_ids, causal, scale)
    return _attention_unresolved(q, k, v, segment_ids, causal, scale, impl)


def _attention_unresolved(q, k, v, segment_ids, causal, scale, impl):
    """PyNative convenience path for impl "auto" / not-yet-loaded "fast"."""
    impl = resolve_impl(impl)
    if impl == "fast":
        return FAST.fast_attention(q, k, v, segment_ids, causal, scale)
    if impl == "ascend":
        return _ascend_attention(q, k, v, segment_ids, causal, scale)
    return _ref.attention(q, k, v, segment_ids, causal, scale)
