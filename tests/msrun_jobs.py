"""Helpers for tests that run recipes in one process and under `msrun` (not a test module).

    single(root, recipe, name, sets)            one process, `python -m recipes.run`
    launch(root, recipe, strategy, name, sets)  `python -m parallel_strategies launch` (prints, then runs msrun)
    final(run_dir)                              (per-step losses, newest checkpoint's tensors)
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from recipes.io import checkpoint as ck

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    out = dict(os.environ)
    out["PATH"] = os.path.dirname(sys.executable) + os.pathsep + out.get("PATH", "")  # workers run `python`
    out["PYTHONPATH"] = ROOT
    out["GLOG_v"] = "3"
    return out


def _sets(sets) -> list:
    return sum((["--set", s] for s in sets), [])


def single(root, recipe: str, name: str, sets=(), resume: bool = False) -> subprocess.CompletedProcess:
    """Train `recipe` in one process under run.root=root, run.name=name."""
    argv = [sys.executable, "-m", "recipes.run", recipe, *_sets([*sets, f"run.root={root}", f"run.name={name}"])]
    return subprocess.run(argv + (["--resume"] if resume else []), cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=900)


def launch(root, recipe: str, strategy: str, name: str, sets=(), resume: bool = False) -> subprocess.CompletedProcess:
    """Train `recipe` under msrun with `strategy`; the workers' log tails are appended to stderr on failure."""
    logs = os.path.join(root, f"logs-{name}")
    out = subprocess.run(
        [sys.executable, "-m", "parallel_strategies", "launch", "--recipe", recipe, "--strategy", strategy,
         f"--master-port={free_port()}", f"--log-dir={logs}",
         *_sets([*sets, f"run.root={root}", f"run.name={name}"]), *(["--resume"] if resume else [])],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=1200,
    )
    if out.returncode != 0 and os.path.isdir(logs):
        out.stderr += "".join(open(os.path.join(logs, f)).read()[-1500:] for f in sorted(os.listdir(logs)))
    return out


def final(run_dir):
    """(training loss per step, {name: tensor} of the newest valid checkpoint)."""
    newest = ck.latest_valid(os.path.join(run_dir, "checkpoints"))
    losses = [json.loads(line)["loss"] for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return losses, ck.load_tensors(newest.path, ck.MODEL_FILE)
