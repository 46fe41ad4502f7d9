"""Test-wide settings: quiet MindSpore logging, repo root importable, PyNative between tests."""

import os
import sys

import pytest

os.environ.setdefault("GLOG_v", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def _pynative_after_each_test():
    """The trainer switches the process to GRAPH mode; unit tests expect MindSpore's default."""
    yield
    import mindspore as ms

    if ms.get_context("mode") != ms.PYNATIVE_MODE:
        ms.set_context(mode=ms.PYNATIVE_MODE)
