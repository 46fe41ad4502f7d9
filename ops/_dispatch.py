"""Shared helpers for the `impl=` switch of every op package.

Every op's public function takes `impl` = "auto" | "reference" | "fast" | "ascend". "auto" first
follows the process-wide default set by `impl_scope` (how a model config's `ops_impl` reaches every
op: the model builds its cells inside `with impl_scope(cfg.ops_impl):` and each cell resolves its
impls once, at build time); when that default is "auto" too, the op picks for the device (see each
op's `resolve_impl`).
"""
import contextlib
import importlib
import warnings

import mindspore as ms

IMPLS = ("auto", "reference", "fast", "ascend")

_SCOPE = ["auto"]      # stack of process-wide defaults for impl="auto"


def on_ascend() -> bool:
    """True when the current MindSpore device target is an Ascend NPU."""
    return ms.get_context("device_target") == "Ascend"


def check_impl(impl: str, op: str) -> None:
    """Raise a helpful ValueError for an unknown `impl` value."""
    if impl not in IMPLS:
        raise ValueError(f"impl: unknown value {impl!r} for op {op}; use one of {IMPLS}")


def default_impl() -> str:
    """The current process-wide default for impl="auto" ("auto" unless inside `impl_scope`)."""
    return _SCOPE[-1]


@contextlib.contextmanager
def impl_scope(impl: str):
    """Within the block, every op's impl="auto" resolves as `impl` (e.g. "reference")."""
    check_impl(impl, "ops_impl")
    _SCOPE.append(impl)
    try:
        yield
    finally:
        _SCOPE.pop()


def effective(impl: str, op: str) -> str:
    """Validate `impl` and apply the scope default to "auto"."""
    check_impl(impl, op)
    return _SCOPE[-1] if impl == "auto" else impl


def load_fast(module: str, attr: str):
    """Import `module` (which builds its kernel on import) and return its `attr`, or None with a
    warning when it cannot be built/loaded (no g++, broken build): callers fall back to reference."""
    try:
        return getattr(importlib.import_module(module), attr)
    except Exception as exc:  # noqa: BLE001 (any build/load failure means "no fast path")
        warnings.warn(f"{module} unavailable ({exc!r}); using the reference")
        return None


def resolve_fast(op: str, impl: str, fast_available, auto_fast: bool = True) -> str:
    """The `resolve_impl` of an op with a CPU fast path: "reference" | "fast" | "ascend".

    "auto" follows `impl_scope`, then picks "ascend" on Ascend, else "fast" when `auto_fast`
    (measured faster on CPU, docs/ops.md), else "reference"; "fast" becomes "reference" when
    `fast_available()` (builds/loads the kernel on first use) says the kernel is unusable."""
    impl = effective(impl, op)
    if impl == "auto":
        if on_ascend():
            return "ascend"
        impl = "fast" if auto_fast else "reference"
    if impl == "fast" and not fast_available():
        return "reference"
    return impl
