"""Operator library: each op is a folder with `reference.py` (plain MindSpore, fp32, readable),
an optional fast path, and an `__init__.py` exposing ONE public dispatching function with an
explicit `impl=` override ("auto" | "reference" | "fast" | "ascend")."""

from ops._dispatch import IMPLS, forced_impl, impl_scope  # noqa: E402  (the impl switch every op shares)

__all__ = ["IMPLS", "forced_impl", "impl_scope"]
