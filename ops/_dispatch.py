"""Shared helper for the `impl=` switch of every op package."""
import mindspore as ms

IMPLS = ("auto", "reference", "fast", "ascend")


def on_ascend() -> bool:
    """True when the current MindSpore device target is an Ascend NPU."""
    return ms.get_context("device_target") == "Ascend"


def check_impl(impl: str, op: str) -> None:
    """Raise a helpful ValueError for an unknown `impl` value."""
    if impl not in IMPLS:
        raise ValueError(f"impl: unknown value {impl!r} for op {op}; use one of {IMPLS}")
