"""SwiGLU activation. `swiglu(gate, up, impl="auto")` = silu(gate) * up.

impl: "reference" (composition), "ascend" (fused ops.swiglu on concat([gate, up], -1)),
"fast" -> reference on CPU, "auto" -> ascend on Ascend else reference."""
from mindspore import ops

from ops._dispatch import check_impl, on_ascend
from ops.swiglu import reference as _ref

__all__ = ["swiglu", "resolve_impl"]


def resolve_impl(impl="auto"):
    """Concrete implementation for this device."""
    check_impl(impl, "swiglu")
    if impl == "auto":
        return "ascend" if on_ascend() else "reference"
    if impl == "fast":
        return "reference"
    return impl


def swiglu(gate, up, impl="auto"):
    """silu(gate) * up, same shape as gate."""
    if impl not in ("reference", "ascend"):
        impl = resolve_impl(impl)
    if impl == "ascend":
        return ops.swiglu(ops.concat((gate, up), -1), -1)
    return _ref.swiglu(gate, up)
