"""Checkpoint files: atomic layout, manifest verification, fallback to the newest valid, pruning."""

import json
import os

import numpy as np
import pytest

from recipes.io import checkpoint as ck


def tensors(seed):
    rng = np.random.default_rng(seed)
    return {"a.weight": rng.standard_normal((4, 3)).astype(np.float32), "b.bias": rng.standard_normal(5).astype(np.float32)}


def save(root, step, keep_last=10):
    return ck.save(str(root), step, tensors(step), {"adam_step": np.array(step, np.int32)}, {"step": step}, keep_last)


def test_save_writes_verified_layout(tmp_path):
    path = save(tmp_path, 3)
    assert os.path.basename(path) == "step_00000003"
    assert sorted(os.listdir(path)) == ["manifest.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"]
    assert ck.verify(path) == {"step": 3}
    loaded = ck.load_tensors(path, ck.MODEL_FILE)
    for name, value in tensors(3).items():
        np.testing.assert_array_equal(loaded[name], value)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


def test_truncated_and_corrupted_are_named(tmp_path):
    path = save(tmp_path, 1)
    model = os.path.join(path, ck.MODEL_FILE)
    data = open(model, "rb").read()
    open(model, "wb").write(data[:-7])
    with pytest.raises(ck.CheckpointError) as err:
        ck.verify(path)
    assert str(err.value) == f"{model}: truncated or padded ({len(data) - 7} bytes, manifest says {len(data)}); use an earlier checkpoint"

    flipped = bytearray(data)
    flipped[-1] ^= 0xFF
    open(model, "wb").write(bytes(flipped))
    with pytest.raises(ck.CheckpointError) as err:
        ck.verify(path)
    assert str(err.value) == f"{model}: sha256 mismatch (corrupted); use an earlier checkpoint"

    os.remove(os.path.join(path, ck.MANIFEST_FILE))
    with pytest.raises(ck.CheckpointError) as err:
        ck.verify(path)
    assert "no manifest.json (incomplete checkpoint)" in str(err.value)


def test_latest_valid_falls_back_and_says_so(tmp_path):
    save(tmp_path, 1)
    newest = save(tmp_path, 2)
    with open(os.path.join(newest, ck.STATE_FILE), "a") as f:
        f.write(" ")
    said = []
    found = ck.latest_valid(str(tmp_path), warn=said.append)
    assert found.step == 1
    assert len(said) == 1 and "step_00000002" in said[0] and "truncated or padded" in said[0]


def test_keep_last_n_never_deletes_only_valid(tmp_path):
    for step in (1, 2, 3):
        save(tmp_path, step, keep_last=2)
    assert [c.step for c in ck.list_checkpoints(str(tmp_path))] == [2, 3]
    # Corrupt both; a new save that is itself corrupted later must not wipe the last valid one.
    for c in ck.list_checkpoints(str(tmp_path))[1:]:
        os.remove(os.path.join(c.path, ck.MANIFEST_FILE))
    ck.prune(str(tmp_path), keep_last=1)
    assert [c.step for c in ck.list_checkpoints(str(tmp_path))] == [2, 3]  # 2 is the only valid: kept
    assert ck.latest_valid(str(tmp_path), warn=lambda _: None).step == 2


def test_stale_temporary_dirs_are_ignored_and_cleaned(tmp_path):
    os.makedirs(tmp_path / ".tmp-step_00000009-1")
    (tmp_path / ".tmp-step_00000009-1" / "model.safetensors").write_bytes(b"partial")
    assert ck.list_checkpoints(str(tmp_path)) == []
    save(tmp_path, 1)
    assert not (tmp_path / ".tmp-step_00000009-1").exists()


def test_strict_compatibility_check():
    expected = {"a.weight": (4, 3), "b.bias": (5,)}
    with pytest.raises(ck.CheckpointError) as err:
        ck.check_compatible(expected, {"a.weight": np.zeros((4, 3))}, "ckpt")
    assert str(err.value) == "ckpt: missing 1 (e.g. b.bias); the checkpoint was made for a different model config"
    with pytest.raises(ck.CheckpointError) as err:
        ck.check_compatible(expected, {"a.weight": np.zeros((3, 4)), "b.bias": np.zeros(5)}, "ckpt")
    assert "a.weight has shape (3, 4), model expects (4, 3)" in str(err.value)


def test_manifest_records_sizes_and_hashes(tmp_path):
    path = save(tmp_path, 5)
    manifest = json.load(open(os.path.join(path, ck.MANIFEST_FILE)))
    assert manifest["step"] == 5
    for name, meta in manifest["files"].items():
        assert meta["bytes"] == os.path.getsize(os.path.join(path, name))
        assert len(meta["sha256"]) == 64


def test_fortran_ordered_and_scalar_tensors_round_trip(tmp_path):
    """A gathered shard can be Fortran-ordered (concatenated along a moved axis); safetensors would write
    its memory as if C-ordered, i.e. transposed. The scalar optimiser step keeps its 0-d shape."""
    full = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = ck.save(str(tmp_path), 1, {"w": np.asfortranarray(full)}, {"adam_step": np.array(7, np.int32)},
                   {"step": 1}, keep_last=1)
    np.testing.assert_array_equal(ck.load_tensors(path, ck.MODEL_FILE)["w"], full)
    assert ck.load_tensors(path, ck.OPTIMIZER_FILE)["adam_step"].shape == ()
