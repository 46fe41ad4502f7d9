"""Attention op (plan/CONTRACTS.md "Attention op contract").

`attention(q, k, v, segment_ids=None, *, causal=True, scale=None, impl="auto")`
  q [B, N, S, Dqk], k [B, Nkv, S, Dqk], v [B, Nkv, S, Dv] -> [B, N, S, Dv] in q's dtype.

impl:
  "reference": explicit-mask softmax (reference.py).
  "fast":      tiled online-softmax custom op from `ops.attention.fast_cpu`, imported LAZILY; it
               must expose `attention` or `fast_attention(q, k, v, segment_ids, causal, scale)`, may expose
               `is_available() -> bool` (e.g. False when its .so is not built). If it cannot be
               imported/used, "fast" falls back to "reference" with a warning.
  "ascend":    flash_attention_score (Ascend only).
  "auto":      ascend on Ascend, else fast if importable/built, else reference.

GRAPH mode: resolve the impl once outside the graph (`resolve_impl`, done by the model at
build time) and pass the concrete name; the lazily loaded fast function is cached in a module
global so the graph compiler can resolve it.
"""
import warnings

from ops._dispatch import resolve_fast
from ops.attention import reference as _ref

__all__ = ["attention", "resolve_impl", "fast_available"]

_FAST_FN = None          # ops.attention.fast_cpu.attention once loaded
_FAST_TRIED = False


def fast_available() -> bool:
    """Import ops.attention.fast_cpu on first use; True when its kernel is usable."""
    global _FAST_FN, _FAST_TRIED
    if not _FAST_TRIED:
        _FAST_TRIED = True
        try:
            from ops.attention import fast_cpu  # noqa: WPS433 (lazy on purpose)
            ok = getattr(fast_cpu, "is_available", lambda: True)()
            fn = getattr(fast_cpu, "attention", None) or getattr(fast_cpu, "fast_attention")
            _FAST_FN = fn if ok else None
        except Exception as exc:  # not written yet / not built / broken build
            warnings.warn(f"ops.attention.fast_cpu unavailable ({exc!r}); using reference")
            _FAST_FN = None
    return _FAST_FN is not None


def resolve_impl(impl: str = "auto") -> str:
    """Concrete impl name for this device: "reference" | "fast" | "ascend"."""
    return resolve_fast("attention", impl, fast_available, True)


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
    if impl == "fast" and _FAST_FN is not None:
        return _FAST_FN(q, k, v, segment_ids, causal, scale)
    return _attention_unresolved(q, k, v, segment_ids, causal, scale, impl)


def _attention_unresolved(q, k, v, segment_ids, causal, scale, impl):
    """PyNative convenience path for impl "auto" / not-yet-loaded "fast"."""
    impl = resolve_impl(impl)
    if impl == "fast":
        return _FAST_FN(q, k, v, segment_ids, causal, scale)
    if impl == "ascend":
        return _ascend_attention(q, k, v, segment_ids, causal, scale)
    return _ref.attention(q, k, v, segment_ids, causal, scale)
