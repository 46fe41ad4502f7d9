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

from ops._dispatch import FastPath
from ops.swiglu import reference as _ref

__all__ = ["swiglu", "resolve_impl", "fast_available"]

AUTO_FAST = True     # "auto" picks the kernel on CPU (measured faster, docs/ops.md)
FAST = FastPath("swiglu", "ops.swiglu.fast_cpu", ("swiglu",), AUTO_FAST)
fast_available = FAST.available   # build/load the CPU kernel on first use; True when usable
resolve_impl = FAST.resolve       # concrete impl for this device: "reference" | "fast" | "ascend"


def swiglu(gate, up, impl="auto"):
    """silu(gate) * up, same shape as gate."""
    if impl == "reference":
        return _ref.swiglu(gate, up)
    if impl == "ascend":
        return ops.swiglu(ops.concat((gate, up), -1), -1)
    if impl == "fast" and FAST.ready:
        return FAST.swiglu(gate, up)
    return swiglu(gate, up, resolve_impl(impl))
