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
from ops._dispatch import load_fast, resolve_fast
from ops.adamw import reference as _ref

__all__ = ["adamw_update", "sum_squares", "resolve_impl", "fast_available"]

_FAST_UPDATE = _FAST_SUM_SQUARES = None
_FAST_TRIED = False


def fast_available() -> bool:
    """Build/load the CPU kernels on first use; True when they are usable."""
    global _FAST_UPDATE, _FAST_SUM_SQUARES, _FAST_TRIED
    if not _FAST_TRIED:
        _FAST_TRIED = True
        _FAST_UPDATE = load_fast("ops.adamw.fast_cpu", "adamw_update")
        _FAST_SUM_SQUARES = _FAST_UPDATE and load_fast("ops.adamw.fast_cpu", "sum_squares")
    return _FAST_SUM_SQUARES is not None


def resolve_impl(impl="auto"):
    """Concrete implementation for this device: "reference" | "fast" | "ascend"."""
    return resolve_fast("adamw", impl, fast_available, True)


def adamw_update(param, m, v, grad, hyper, impl="auto"):
    """One AdamW step for one parameter -> (param', m', v') (the caller assigns them)."""
    if impl == "fast" and _FAST_UPDATE is not None:
        return _FAST_UPDATE(param, m, v, grad, hyper)
    if impl in ("reference", "ascend"):
        return _ref.adamw_update(param, m, v, grad, hyper)
    return adamw_update(param, m, v, grad, hyper, resolve_impl(impl))


def sum_squares(x, impl="auto"):
    """sum(x ** 2) as a fp32 scalar."""
    if impl == "fast" and _FAST_SUM_SQUARES is not None:
        return _FAST_SUM_SQUARES(x)
    if impl in ("reference", "ascend"):
        return _ref.sum_squares(x)
    return sum_squares(x, resolve_impl(impl))
