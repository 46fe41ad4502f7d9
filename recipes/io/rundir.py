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
import os
import shutil
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


def prepare_out(out: str, overwrite: bool, create: bool = True) -> None:
    """Create an empty OUT; refuse one that already holds files unless overwrite (then empty it).
    create=False only checks."""
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise ValueError(f"--out: {out} is not empty; choose a new directory or pass --overwrite")
        if create:
            shutil.rmtree(out)
    if create:
        os.makedirs(out, exist_ok=True)


@contextlib.contextmanager
def staged_out(out: str, overwrite: bool):
    """Write a directory all at once: yields a staging directory next to OUT that replaces OUT when
    the block succeeds (OUT emptied only then, and only with overwrite) and is removed when it
    fails, so a failed write never leaves OUT half-written or destroys a previous OUT."""
    prepare_out(out, overwrite, create=False)
    stage = f"{os.path.normpath(out)}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.replace(stage, out)


def write_run_checkpoint(out: str, step: int, tensors: dict[str, np.ndarray], state: dict,
                         config_from: str | None) -> str:
    """Write OUT/checkpoints/step_*/ (+ OUT/config.yaml copied from run `config_from`); return the step dir."""
    os.makedirs(out, exist_ok=True)
    if config_from is not None:
        with open(os.path.join(config_from, "config.yaml")) as f:
            raw = yaml.safe_load(f) or {}
        raw.setdefault("run", {})["name"] = os.path.basename(os.path.normpath(out))
        raw["run"]["root"] = os.path.dirname(os.path.abspath(out))
        with open(os.path.join(out, "config.yaml"), "w") as f:
            yaml.safe_dump(raw, f, sort_keys=False)
    state = {"step": step, "data_position": 0, **state}
    return ckpt_lib.save(os.path.join(out, "checkpoints"), step, tensors, None, state, keep_last=1)
