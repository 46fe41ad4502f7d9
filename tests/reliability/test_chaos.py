"""Exact resume after SIGKILL, through real processes: `recipes.tools.chaos` with 2 kill points on the tiny
preset (one anywhere in a step, one in the middle of a checkpoint write). `make chaos` runs 10."""

import pytest

from recipes.tools.chaos import run_chaos

pytestmark = pytest.mark.integration


def test_killed_and_resumed_runs_are_bitwise_identical(tmp_path):
    lines = []
    trials = run_chaos(kills=2, seed=0, steps=10, every=2, root=str(tmp_path / "chaos"), out=lines.append)
    report = "\n".join(lines)
    assert [t.kind for t in trials] == ["step", "checkpoint"]
    assert all(t.identical for t in trials), report
    assert all(t.resumes for t in trials), report  # each trial was really killed and resumed
    assert lines[-1].startswith("2/2 identical"), report
