"""RMSNorm. `rms_norm(x, weight, eps=1e-5, impl="auto")`: x [..., H], weight [H] -> x's shape/dtype.

impl:
  "reference": fp32 composition (reference.py).
  "fast":      fused CPU aot kernel, forward + backward (fast_cpu.py, csrc/rms_norm.cc), loaded
               lazily; falls back to the reference with a warning if it cannot be built.
  "ascend":    fused ops.rms_norm (Ascend only).
  "auto":      the `ops._dispatch.impl_scope` default if set, else ascend on Ascend, else fast when
               AUTO_FAST (measured faster on CPU, docs/ops.md) and buildable, else reference.
GRAPH mode: resolve once outside the graph (`resolve_impl`, done by RMSNorm cells at build time).
"""
from mindspore import ops

from ops._dispatch import FastPath
from ops.rms_norm import reference as _ref

__all__ = ["rms_norm", "resolve_impl", "fast_available"]

AUTO_FAST = True     # "auto" picks the kernel on CPU (measured faster, docs/ops.md)
FAST = FastPath("rms_norm", "ops.rms_norm.fast_cpu", ("rms_norm",), AUTO_FAST)
fast_available = FAST.available   # build/load the CPU kernel on first use; True when usable
resolve_impl = FAST.resolve       # concrete impl for this device: "reference" | "fast" | "ascend"


def rms_norm(x, weight, eps=1e-5, impl="auto"):
    """Root-mean-square norm over the last axis."""
    if impl == "reference":
        return _ref.rms_norm(x, weight, eps)
    if impl == "ascend":
        return ops.rms_norm(x, weight.astype(x.dtype), eps)[0]
    if impl == "fast" and FAST.ready:
        return FAST.rms_norm(x, weight, eps)
    return rms_norm(x, weight, eps, resolve_impl(impl))
