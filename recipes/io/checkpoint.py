"""Checkpoints that are never half-written and are verified before use.

Layout of one checkpoint (a directory under `<run>/checkpoints/`):

    step_00000100/
      model.safetensors       model parameters by name (fp32)
      optimizer.safetensors   AdamW moments and step (optional)
      trainer_state.json      step, data position, seed, config fingerprint
      manifest.json           size and sha256 of each file above

It is written to a temporary sibling directory and renamed into place, so a crash leaves either the
old set of checkpoints or the new one, never a partial directory with a valid name. Loading checks
the manifest; `latest_valid` skips (and names) corrupted checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
PREFIX = "step_"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupted or does not fit the model."""


@dataclass
class Checkpoint:
    path: str
    step: int


def step_dir_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def save(ckpt_root: str, step: int, model: dict[str, np.ndarray], optimizer: dict[str, np.ndarray] | None,
         state: dict, keep_last: int) -> str:
    """Atomically write checkpoint `step` under `ckpt_root`, then prune to the newest `keep_last`."""
    os.makedirs(ckpt_root, exist_ok=True)
    final = os.path.join(ckpt_root, step_dir_name(step))
    tmp = os.path.join(ckpt_root, f".tmp-{step_dir_name(step)}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    _save_c_order(model, os.path.join(tmp, MODEL_FILE))
    if optimizer is not None:
        _save_c_order(optimizer, os.path.join(tmp, OPTIMIZER_FILE))
    with open(os.path.join(tmp, STATE_FILE), "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    files = sorted(n for n in os.listdir(tmp))
    manifest = {n: {"bytes": os.path.getsize(os.path.join(tmp, n)), "sha256": _sha256(os.path.join(tmp, n))} for n in files}
    with open(os.path.join(tmp, MANIFEST_FILE), "w") as f:
        json.dump({"step": step, "files": manifest}, f, indent=1, sort_keys=True)
    for name in os.listdir(tmp):
        _fsync(os.path.join(tmp, name))
    if os.path.exists(final):  # re-saving the same step (e.g. after a resume): replace it atomically
        old = final + f".old-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    _fsync(ckpt_root)
    prune(ckpt_root, keep_last)
    return final


def verify(path: str) -> dict:
    """Check a checkpoint directory against its manifest; return its trainer state."""
    manifest_path = os.path.join(path, MANIFEST_FILE)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: checkpoint directory not found; check the path")
    if not os.path.isfile(manifest_path):
        raise CheckpointError(f"{path}: no {MANIFEST_FILE} (incomplete checkpoint); use an earlier checkpoint")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({err}); use an earlier checkpoint") from None
    for name in (MODEL_FILE, STATE_FILE):
        if name not in files:
            raise CheckpointError(f"{path}: manifest lists no {name}; use an earlier checkpoint")
    for name, meta in files.items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise CheckpointError(f"{file}: missing; use an earlier checkpoint")
        size = os.path.getsize(file)
        if size != meta["bytes"]:
            raise CheckpointError(f"{file}: truncated or padded ({size} bytes, manifest says {meta['bytes']}); use an earlier checkpoint")
        if _sha256(file) != meta["sha256"]:
            raise CheckpointError(f"{file}: sha256 mismatch (corrupted); use an earlier checkpoint")
    with open(os.path.join(path, STATE_FILE)) as f:
        return json.load(f)


def list_checkpoints(ckpt_root: str) -> list[Checkpoint]:
    """All finished checkpoint directories (by name), oldest first. Temporary dirs are ignored."""
    if not os.path.isdir(ckpt_root):
        return []
    out = []
    for name in os.listdir(ckpt_root):
        if name.startswith(PREFIX) and name[len(PREFIX):].isdigit():
            out.append(Checkpoint(os.path.join(ckpt_root, name), int(name[len(PREFIX):])))
    return sorted(out, key=lambda c: c.step)


def latest_valid(ckpt_root: str, warn=print) -> Checkpoint | None:
    """The newest checkpoint that passes `verify`; each one skipped is reported through `warn`."""
    for ckpt in reversed(list_checkpoints(ckpt_root)):
        try:
            verify(ckpt.path)
            return ckpt
        except CheckpointError as err:
            warn(f"skipping checkpoint: {err}")
    return None


def prune(ckpt_root: str, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints, never the newest valid one."""
    ckpts = list_checkpoints(ckpt_root)
    newest_valid = latest_valid(ckpt_root, warn=lambda _: None)
    for ckpt in ckpts[:-keep_last] if keep_last > 0 else ckpts:
        if newest_valid is not None and ckpt.path == newest_valid.path:
            continue
        shutil.rmtree(ckpt.path, ignore_errors=True)
    for name in os.listdir(ckpt_root):  # leftovers of a crash mid-save
        if name.startswith(".tmp-") and not name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(os.path.join(ckpt_root, name), ignore_errors=True)


def load_tensors(path: str, filename: str) -> dict[str, np.ndarray]:
    file = os.path.join(path, filename)
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{file}: not a readable safetensors file ({err}); use an earlier checkpoint") from None


def resolve_init_from(path: str) -> str:
    """`init_from` may name a checkpoint directory or a run directory (its newest valid checkpoint)."""
    if os.path.isfile(os.path.join(path, MANIFEST_FILE)):
        verify(path)
        return path
    ckpt = latest_valid(os.path.join(path, "checkpoints"))
    if ckpt is None:
        raise CheckpointError(f"init_from: {path} holds no valid checkpoint; point it at a run directory or a step_* directory")
    return ckpt.path


def check_compatible(expected: dict[str, tuple], found: dict[str, np.ndarray], what: str) -> None:
    """Strict name and shape check before loading tensors into a model or optimizer."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[0]})")
        raise CheckpointError(f"{what}: {', '.join(parts)}; the checkpoint was made for a different model config")
    for name, shape in expected.items():
        if tuple(found[name].shape) != tuple(shape):
            raise CheckpointError(
                f"{what}: {name} has shape {tuple(found[name].shape)}, model expects {tuple(shape)}; "
                "the checkpoint was made for a different model config"
            )


def load_into(target, tensors: dict[str, np.ndarray], what: str) -> None:
    """Copy `tensors` into a model (its parameters by name) or a {name: Parameter} dict, after the strict
    name and shape check of `check_compatible` (one-line CheckpointError naming the first mismatch)."""
    from mindspore import Tensor

    params = target if isinstance(target, dict) else dict(target.parameters_and_names())
    check_compatible({n: tuple(p.shape) for n, p in params.items()}, tensors, what)
    for name, param in params.items():
        param.set_data(Tensor(np.asarray(tensors[name])).astype(param.dtype))


def _save_c_order(tensors: dict[str, np.ndarray], path: str) -> None:
    # safetensors.numpy.save_file writes a Fortran-ordered array's memory as if it were C-ordered (a
    # transposed tensor on disk, no error): every tensor goes in as C-contiguous
    save_file({name: np.require(t, requirements="C") for name, t in tensors.items()}, path)  # keeps 0-d shapes


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
