"""Shared plumbing of the weight tools (average, export, merge_ranks): where a checkpoint is, which
run it belongs to, and how a derived checkpoint is written so that the rest of the project can use it.

A derived checkpoint is written as a *run-like directory*:

    OUT/
      config.yaml                       the source run's resolved recipe (run.name set to OUT's name)
      checkpoints/step_XXXXXXXX/        recipes.io.checkpoint format: model.safetensors,
                                        trainer_state.json (+ how it was made), manifest.json

so `init_from: OUT`, `python -m recipes.evaluate OUT` and `python -m recipes.export OUT` all accept it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import weakref
from dataclasses import dataclass

import numpy as np
import yaml

from recipes.io import checkpoint as ckpt_lib


@dataclass
class Located:
    checkpoint: str  # step_* directory (verified)
    run_dir: str | None  # run directory holding config.yaml, or None when there is none
    step: int


def locate(path: str, log=print) -> Located:
    """A run directory (its newest valid checkpoint) or a step_* checkpoint directory -> Located."""
    path = os.path.normpath(path)
    if os.path.isfile(os.path.join(path, ckpt_lib.MANIFEST_FILE)):
        state = ckpt_lib.verify(path)
        run_dir = os.path.dirname(os.path.dirname(path))
    else:
        if not os.path.isdir(path):
            raise ckpt_lib.CheckpointError(f"{path}: not found; give a run directory or a checkpoints/step_* directory")
        found = ckpt_lib.latest_valid(os.path.join(path, "checkpoints"), warn=log)
        if found is None:
            raise ckpt_lib.CheckpointError(f"{path}: no valid checkpoint under {path}/checkpoints; give a run "
                                           "directory that finished a checkpoint, or a step_* directory")
        path, run_dir = found.path, path
        state = ckpt_lib.verify(path)
    if not os.path.isfile(os.path.join(run_dir, "config.yaml")):
        run_dir = None
    return Located(path, run_dir, int(state.get("step", 0)))


def last_checkpoints(run_dir: str, k: int, log=print) -> list[Located]:
    """The newest `k` valid checkpoints of a run, oldest first (corrupted ones are skipped and named)."""
    if k < 1:
        raise ValueError(f"--last: {k} must be >= 1")
    valid = []
    for ckpt in reversed(ckpt_lib.list_checkpoints(os.path.join(run_dir, "checkpoints"))):
        try:
            valid.append(locate(ckpt.path))
        except ckpt_lib.CheckpointError as err:
            log(f"skipping checkpoint: {err}")
        if len(valid) == k:
            break
    if len(valid) < k:
        raise ValueError(f"--last: {run_dir} has only {len(valid)} valid checkpoints, {k} requested; lower --last "
                         "or keep more checkpoints (checkpoint.keep_last)")
    return valid[::-1]


def model_file(located: Located | str) -> str:
    path = located.checkpoint if isinstance(located, Located) else located
    return os.path.join(path, ckpt_lib.MODEL_FILE)


def load_run_config(run_dir: str):
    """(recipe, model_cfg) resolved from a run directory's config.yaml."""
    from recipes.engine.config import resolve

    with open(os.path.join(run_dir, "config.yaml")) as f:
        raw = yaml.safe_load(f) or {}
    raw["init_from"] = None  # the previous stage may be gone; the weights are in the checkpoint
    return resolve(raw, default_run_name=os.path.basename(run_dir))


# ------------------------------------------------------------------------------------- ownership
LOCK_FILE = ".lock"     # RUN/.lock: flock'ed by the process that owns the run; holds {"pid", "host"}
RUN_MARKERS = ("config.yaml", "checkpoints", LOCK_FILE)  # a directory holding one of these is a run of ours
_HELD: dict[str, list] = {}  # realpath of a run directory -> [fd, holders] (a process may re-enter its own lock)


def _owner_text(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        owner = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"pid {owner['pid']} on {owner['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class RunLock:
    """This process's hold on RUN/.lock; released when closed, garbage-collected or at process exit
    (the OS drops an flock with its process, so a lock left by a killed process is free: stale)."""

    def __init__(self, run_dir: str, fd: int, key: str):
        self.run_dir, self.previous_owner = run_dir, None
        self._finalizer = weakref.finalize(self, _release, key)

    def close(self) -> None:
        self._finalizer()


def _release(key: str) -> None:
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _HELD[key]
        os.close(held[0])   # closing the descriptor releases the flock


def lock_run(run_dir: str, what: str = "run.name") -> RunLock:
    """Create RUN (if needed) and own it: flock RUN/.lock and write this process's pid and host into it.
    Another live process holding it -> ValueError naming it; a lock file left by a dead process is taken over
    (RunLock.previous_owner says whose it was)."""
    os.makedirs(run_dir, exist_ok=True)
    key = os.path.realpath(run_dir)
    if key in _HELD:
        _HELD[key][1] += 1
        return RunLock(run_dir, _HELD[key][0], key)
    fd = os.open(os.path.join(run_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _owner_text(fd)
        os.close(fd)
        raise ValueError(f"{what}: {run_dir} is in use by {owner} (lock {os.path.join(run_dir, LOCK_FILE)}); "
                         "wait for it to finish or choose another run.name") from None
    previous = _owner_text(fd)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
    os.fsync(fd)
    _HELD[key] = [fd, 1]
    lock = RunLock(run_dir, fd, key)
    lock.previous_owner = None if previous == "another process" else previous
    return lock


def check_unlocked(path: str, what: str = "--out") -> None:
    """ValueError naming the owner when another live process holds PATH/.lock (a run in progress)."""
    lock_path = os.path.join(path, LOCK_FILE)
    if not os.path.isfile(lock_path) or os.path.realpath(path) in _HELD:
        return
    fd = os.open(lock_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ValueError(f"{what}: {path} is in use by {_owner_text(fd)} (lock {lock_path}); wait for it to "
                         "finish or choose another directory") from None
    finally:
        os.close(fd)


def check_not_foreign(run_dir: str) -> None:
    """Refuse an existing non-empty directory that is not a run of ours (no config.yaml, checkpoints/, .lock)."""
    if os.path.isdir(run_dir) and os.listdir(run_dir) and not any(
            os.path.exists(os.path.join(run_dir, m)) for m in RUN_MARKERS):
        raise ValueError(f"run.name: {run_dir} exists, is not empty and is not a run directory (no config.yaml or "
                         "checkpoints/); choose another run.name or point run.root/run.name at an empty directory")


def check_disjoint(out: str, inputs) -> None:
    """Refuse an output that is, contains or lies inside one of the inputs (a write would destroy them)."""
    o = os.path.realpath(out)
    for inp in inputs:
        if inp is None:
            continue
        i = os.path.realpath(inp)
        if o == i or o.startswith(i + os.sep) or i.startswith(o + os.sep):
            relation = "is" if o == i else ("is inside" if o.startswith(i + os.sep) else "contains")
            raise ValueError(f"--out: {out} {relation} the input {inp}; write to a directory outside the inputs")


def prepare_out(out: str, overwrite: bool, create: bool = True, inputs=()) -> None:
    """Create an empty OUT; refuse one that already holds files unless overwrite (then empty it), one that
    is / contains / lies inside an input, and one a live run holds. create=False only checks."""
    check_disjoint(out, inputs)
    check_unlocked(out)
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise ValueError(f"--out: {out} is not empty; choose a new directory or pass --overwrite")
        if create:
            shutil.rmtree(out)
    if create:
        os.makedirs(out, exist_ok=True)


@contextlib.contextmanager
def staged_out(out: str, overwrite: bool, inputs=()):
    """Write a directory all at once: yields a staging directory next to OUT that replaces OUT when
    the block succeeds (OUT emptied only then, and only with overwrite) and is removed when it
    fails, so a failed write never leaves OUT half-written or destroys a previous OUT."""
    prepare_out(out, overwrite, create=False, inputs=inputs)
    stage = f"{os.path.normpath(out)}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    prepare_out(out, overwrite, create=False, inputs=inputs)   # still true after the work (a run may have started)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.replace(stage, out)


def write_run_checkpoint(out: str, step: int, tensors: dict[str, np.ndarray], state: dict,
                         config_from: str | None, final: str | None = None) -> str:
    """Write OUT/checkpoints/step_*/ (+ OUT/config.yaml copied from run `config_from`); return the step dir.
    `final`: the directory OUT becomes (OUT is its staging directory), named in config.yaml's run."""
    os.makedirs(out, exist_ok=True)
    final = final or out
    if config_from is not None:
        with open(os.path.join(config_from, "config.yaml")) as f:
            raw = yaml.safe_load(f) or {}
        raw.setdefault("run", {})["name"] = os.path.basename(os.path.normpath(final))
        raw["run"]["root"] = os.path.dirname(os.path.abspath(final))
        with open(os.path.join(out, "config.yaml"), "w") as f:
            yaml.safe_dump(raw, f, sort_keys=False)
    state = {"step": step, "data_position": 0, **state}
    return ckpt_lib.save(os.path.join(out, "checkpoints"), step, tensors, None, state, keep_last=1)
