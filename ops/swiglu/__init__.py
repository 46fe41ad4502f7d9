"""SwiGLU activation. `swiglu(gate, up, impl="auto")` = silu(gate) * up.

impl:
  "reference": fp32 composition (reference.py).
  "fast":      fused CPU aot kernel, forward + backward (fast_cpu.py, csrc/swiglu.cc), loaded
               lazily; falls back to the reference with a warning if it cannot be built.
  "ascend":    fused ops.swiglu on concat([gate, up], -1) (Ascend only).
  "auto":      the `ops._dispatch.impl_scope` default if set, else ascend on Ascend, else fast when
               AUTO_FAST (measured faster on CPU, docs/ops.md) and buildable, else reference.
"""
from mindspore import ops

from ops._dispatch import load_fast, resolve_fast
from ops.swiglu import reference as _ref

__all__ = ["swiglu", "resolve_impl", "fast_available"]

AUTO_FAST = True
_FAST_FN = None
_FAST_TRIED = False


def fast_available() -> bool:
    """Build/load the CPU kernel on first use; True when it is usable."""
    global _FAST_FN, _FAST_TRIED
    if not _FAST_TRIED:
        _FAST_TRIED = True
        _FAST_FN = load_fast("ops.swiglu.fast_cpu", "swiglu")
    return _FAST_FN is not None


def resolve_impl(impl="auto"):
    """Concrete implementation for this device: "reference" | "fast" | "ascend"."""
    return resolve_fast("swiglu", impl, fast_available, AUTO_FAST)


def swiglu(gate, up, impl="auto"):
    """silu(gate) * up, same shape as gate."""
    if impl == "reference":
        return _ref.swiglu(gate, up)
    if impl == "ascend":
        return ops.swiglu(ops.concat((gate, up), -1), -1)
    if impl == "fast" and _FAST_FN is not None:
        return _FAST_FN(gate, up)
    return swiglu(gate, up, resolve_impl(impl))
