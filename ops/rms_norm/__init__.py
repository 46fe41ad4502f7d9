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

from ops._dispatch import load_fast, resolve_fast
from ops.rms_norm import reference as _ref

__all__ = ["rms_norm", "resolve_impl", "fast_available"]

AUTO_FAST = True
_FAST_FN = None
_FAST_TRIED = False


def fast_available() -> bool:
    """Build/load the CPU kernel on first use; True when it is usable."""
    global _FAST_FN, _FAST_TRIED
    if not _FAST_TRIED:
        _FAST_TRIED = True
        _FAST_FN = load_fast("ops.rms_norm.fast_cpu", "rms_norm")
    return _FAST_FN is not None


def resolve_impl(impl="auto"):
    """Concrete implementation for this device: "reference" | "fast" | "ascend"."""
    return resolve_fast("rms_norm", impl, fast_available, AUTO_FAST)


def rms_norm(x, weight, eps=1e-5, impl="auto"):
    """Root-mean-square norm over the last axis."""
    if impl == "reference":
        return _ref.rms_norm(x, weight, eps)
    if impl == "ascend":
        return ops.rms_norm(x, weight.astype(x.dtype), eps)[0]
    if impl == "fast" and _FAST_FN is not None:
        return _FAST_FN(x, weight, eps)
    return rms_norm(x, weight, eps, resolve_impl(impl))
