"""Rotary position embedding (RoPE).

Public API:
  rotary_tables(position_ids, dim, theta, layout="rotate_half") -> (cos, sin)  fp32 [B, 1, S, dim]
  rotary_tables_2d(row_ids, col_ids, dim, theta, layout="rotate_half")         ViT 2-D RoPE tables
  mrope_tables(position_ids_B3S, dim, theta, sections, layout="rotate_half")   3-D M-RoPE tables
  apply_rope(x, cos, sin, layout="rotate_half", impl="auto")                  x [B, N, S, dim]

impl (apply_rope; the tables are cheap [B, S, dim] compositions shared by every impl):
  "reference": plain ops, both layouts (reference.py).
  "fast":      fused CPU aot kernel, forward + exact backward incl. table gradients
               (fast_cpu.py, csrc/rope.cc); lazily built, reference fallback with a warning.
  "ascend":    fused ops.rotary_position_embedding (Ascend only; mode 0 rotate_half, 1 interleaved).
  "auto":      the `ops._dispatch.impl_scope` default if set, else ascend on Ascend, else fast when
               AUTO_FAST (measured faster on CPU, docs/ops.md) and buildable, else reference.
"""
from mindspore import ops

from ops._dispatch import FastPath
from ops.rope.reference import (LAYOUTS, check_layout, inv_freq, mrope_tables, rotary_tables,
                                rotary_tables_2d)
from ops.rope import reference as _ref

__all__ = ["rotary_tables", "rotary_tables_2d", "mrope_tables", "apply_rope", "resolve_impl",
           "fast_available", "LAYOUTS", "inv_freq"]

AUTO_FAST = True     # "auto" picks the kernel on CPU (measured faster, docs/ops.md)
FAST = FastPath("rope", "ops.rope.fast_cpu", ("apply_rope",), AUTO_FAST)
fast_available = FAST.available   # build/load the CPU kernel on first use; True when usable
resolve_impl = FAST.resolve       # concrete impl for this device: "reference" | "fast" | "ascend"


def apply_rope(x, cos, sin, layout="rotate_half", impl="auto"):
    """Rotate x [B, N, S, D] by the tables from `rotary_tables` (same `layout`)."""
    check_layout(layout)
    if impl == "reference":
        return _ref.apply_rope(x, cos, sin, layout)
    if impl == "ascend":
        mode = 0 if layout == "rotate_half" else 1
        return ops.rotary_position_embedding(x, cos.astype(x.dtype), sin.astype(x.dtype), mode)
    if impl == "fast" and FAST.ready:
        return FAST.apply_rope(x, cos, sin, layout)
    return apply_rope(x, cos, sin, layout, resolve_impl(impl))
