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
_FORCED = [None]       # stack of impls that override every request (forced_impl)


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


@contextlib.contextmanager
def forced_impl(impl: str):
    """Within the block every op resolves to `impl`, whatever it or its scope asks for. Used to
    describe a model (its parameter names and shapes) without building any kernel."""
    check_impl(impl, "forced_impl")
    _FORCED.append(impl)
    try:
        yield
    finally:
        _FORCED.pop()


def effective(impl: str, op: str) -> str:
    """Validate `impl`, then apply `forced_impl`, then the scope default to "auto"."""
    check_impl(impl, op)
    if _FORCED[-1] is not None:
        return _FORCED[-1]
    return _SCOPE[-1] if impl == "auto" else impl


class FastPath:
    """The CPU fast path of one op package: kernel functions of `module`, built and loaded lazily.

    `module` builds its aot kernel when imported (ops/_build.py); `names` are the functions it
    exports (and, optionally, `is_available() -> bool`). On the first `available()` the module is
    imported once; when that fails (no g++, broken build) or `is_available()` says no, a warning is
    printed and the op falls back to its reference. Afterwards each name is an attribute of this
    object (`FAST.rms_norm(...)`) and `ready` says whether they are usable. The op's dispatcher
    tests `impl == "fast" and FAST.ready`: GRAPH mode reads both at compile time, which is why the
    impl is resolved once, outside any graph, when a model's cells are built.
    """

    def __init__(self, op: str, module: str, names: tuple, auto_fast: bool = True):
        self.op, self.module, self.names = op, module, tuple(names)
        self.auto_fast = auto_fast     # "auto" picks "fast" on CPU (measured faster, docs/ops.md)
        self.ready = False
        self.enabled = True            # set_enabled(False): A/B runs against the composition
        self._tried = False

    def available(self) -> bool:
        """Build/load the kernels on first use; True when they are usable (and enabled)."""
        if not self._tried:
            self._tried = True
            try:
                mod = importlib.import_module(self.module)
                fns = [getattr(mod, name) for name in self.names]
                ok = getattr(mod, "is_available", lambda: True)()
            except Exception as exc:  # noqa: BLE001 (any build/load failure means "no fast path")
                warnings.warn(f"{self.module} unavailable ({exc!r}); using the reference")
                ok = False
            if ok:
                for name, fn in zip(self.names, fns):
                    setattr(self, name, fn)
                self.ready = True
        return self.ready and self.enabled

    def set_enabled(self, on: bool) -> None:
        """Switch the kernels off (the op runs its composition/reference instead) or back on.
        GRAPH mode reads this when a graph COMPILES (first call): set it before that."""
        self.enabled = bool(on)
        self.ready = bool(on) and self._tried and all(hasattr(self, n) for n in self.names)

    def resolve(self, impl: str = "auto") -> str:
        """The op's `resolve_impl`: "reference" | "fast" | "ascend" (see `resolve_fast`)."""
        return resolve_fast(self.op, impl, self.available, self.auto_fast)


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
