"""Test-wide settings: quiet MindSpore logging, repo root importable, a tmp run root per test."""

import os
import sys

os.environ.setdefault("GLOG_v", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
