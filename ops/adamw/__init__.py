"""Optimiser ops: the AdamW update and the sum of squares (global gradient norm, finiteness guard).

  adamw_update(param, m, v, grad, hyper, impl) -> (param', m', v')
      hyper = [lr, bias1, bias2, grad_scale, beta1, beta2, eps, weight_decay] fp32 [8]
  sum_squares(x, impl) -> fp32 scalar

impl:
  "reference": plain compositions (reference.py): ~18 elementwise passes per parameter.
  "fast":      one-pass CPU aot kernels (fast_cpu.py, csrc/adamw.cc): reads param, m, v, grad once and
               writes the three new tensors; falls back to the reference with a warning if it
               cannot be built.
  "ascend":    the reference composition (graph kernel fusion fuses it on Ascend).
  "auto":      the `ops._dispatch.impl_scope` default if set, else ascend on Ascend, else fast when
               buildable, else reference.
Resolve once at build time (`resolve_impl`) and pass the concrete name in GRAPH mode.
"""
from ops._dispatch import FastPath
from ops.adamw import reference as _ref

__all__ = ["adamw_update", "sum_squares", "resolve_impl", "fast_available"]

FAST = FastPath("adamw", "ops.adamw.fast_cpu", ("adamw_update", "sum_squares"))
fast_available = FAST.available   # build/load the CPU kernel on first use; True when usable
resolve_impl = FAST.resolve       # concrete impl for this device: "reference" | "fast" | "ascend"


def adamw_update(param, m, v, grad, hyper, impl="auto"):
    """One AdamW step for one parameter -> (param', m', v') (the caller assigns them)."""
    if impl == "fast" and FAST.ready:
        return FAST.adamw_update(param, m, v, grad, hyper)
    if impl in ("reference", "ascend"):
        return _ref.adamw_update(param, m, v, grad, hyper)
    return adamw_update(param, m, v, grad, hyper, resolve_impl(impl))


def sum_squares(x, impl="auto"):
    """sum(x ** 2) as a fp32 scalar."""
    if impl == "fast" and FAST.ready:
        return FAST.sum_squares(x)
    if impl in ("reference", "ascend"):
        return _ref.sum_squares(x)
    return sum_squares(x, resolve_impl(impl))
