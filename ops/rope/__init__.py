"""Rotary position embedding (RoPE).

Public API (contract in plan/CONTRACTS.md):
  rotary_tables(position_ids, dim, theta, layout="rotate_half") -> (cos, sin)  fp32 [B, 1, S, dim]
  apply_rope(x, cos, sin, layout="rotate_half", impl="auto")                  x [B, N, S, dim]

impl: "reference" = plain ops (works everywhere, both layouts); "ascend" = the fused
`ops.rotary_position_embedding` (Ascend only; mode 0 = rotate_half, mode 1 = interleaved);
"fast" has no separate CPU kernel (the composition is already memory-bound and cheap) and
maps to "reference"; "auto" = ascend on Ascend, else reference.
"""
from mindspore import ops

from ops._dispatch import check_impl, on_ascend
from ops.rope.reference import LAYOUTS, check_layout, inv_freq, rotary_tables
from ops.rope import reference as _ref

__all__ = ["rotary_tables", "apply_rope", "resolve_impl", "LAYOUTS", "inv_freq"]


def resolve_impl(impl: str = "auto") -> str:
    """Map "auto"/"fast" to the concrete implementation used on this device."""
    check_impl(impl, "rope")
    if impl == "auto":
        return "ascend" if on_ascend() else "reference"
    if impl == "fast":
        return "reference"
    return impl


def apply_rope(x, cos, sin, layout="rotate_half", impl="auto"):
    """Rotate x [B, N, S, D] by the tables from `rotary_tables` (same `layout`)."""
    check_layout(layout)
    if impl not in ("reference", "ascend"):
        impl = resolve_impl(impl)
    if impl == "ascend":
        mode = 0 if layout == "rotate_half" else 1
        return ops.rotary_position_embedding(x, cos.astype(x.dtype), sin.astype(x.dtype), mode)
    return _ref.apply_rope(x, cos, sin, layout)
