"""RMSNorm. `rms_norm(x, weight, eps=1e-5, impl="auto")`.

impl: "reference" (fp32 composition), "ascend" (fused ops.rms_norm, Ascend only), "fast" ->
reference on CPU (a CPU custom kernel would not beat the fused composition), "auto" -> ascend on
Ascend else reference."""
from mindspore import ops

from ops._dispatch import check_impl, on_ascend
from ops.rms_norm import reference as _ref

__all__ = ["rms_norm", "resolve_impl"]


def resolve_impl(impl="auto"):
    """Concrete implementation for this device."""
    check_impl(impl, "rms_norm")
    if impl == "auto":
        return "ascend" if on_ascend() else "reference"
    if impl == "fast":
        return "reference"
    return impl


def rms_norm(x, weight, eps=1e-5, impl="auto"):
    """Root-mean-square norm over the last axis."""
    if impl not in ("reference", "ascend"):
        impl = resolve_impl(impl)
    if impl == "ascend":
        return ops.rms_norm(x, weight.astype(x.dtype), eps)[0]
    return _ref.rms_norm(x, weight, eps)
