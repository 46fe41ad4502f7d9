"""Merging per-rank checkpoints: data-parallel replicas (equality / max difference), optimizer-sharded
slices (dim-0 concatenation by the shard maps, DP x shard), coverage errors, the CLI output."""

import json
import os

import numpy as np
import pytest

from recipes.io import checkpoint as ck
from recipes import merge_ranks as mr

FULL = {"model.embed_tokens.weight": (10, 4), "model.layers.0.mlp.experts.up_proj": (6, 3, 4), "model.norm.weight": (4,)}


def full_tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in FULL.items()}


def write_dp(directory, world, tensors, perturb=None):
    for r in range(world):
        local = {n: v.copy() for n, v in tensors.items()}
        if perturb and r == perturb[0]:
            local[perturb[1]] += perturb[2]
        mr.write_rank(directory, r, world, local)


def write_sharded(directory, tensors, dp, shards, sharded_names):
    """world = dp * shards; rank r holds slice r % shards of each sharded tensor (dim 0)."""
    world = dp * shards
    for r in range(world):
        local, smap = {}, {}
        for n, v in tensors.items():
            if n in sharded_names:
                local[n], off = mr.shard(v, shards, r % shards)
                smap[n] = {"shape": v.shape, "dim": 0, "offset": off}
            else:
                local[n] = v
        mr.write_rank(directory, r, world, local, smap)


def test_data_parallel_replicas(tmp_path):
    t = full_tensors()
    write_dp(str(tmp_path / "dp"), 4, t)
    merged, report = mr.merge(str(tmp_path / "dp"))
    for n in FULL:
        np.testing.assert_array_equal(merged[n], t[n])
    assert report == {"world_size": 4, "replicated": 3, "sharded": 0, "max_replica_diff": 0.0}

    write_dp(str(tmp_path / "drift"), 3, t, perturb=(2, "model.norm.weight", 1e-3))
    with pytest.raises(ValueError) as err:
        mr.merge(str(tmp_path / "drift"))
    assert "model.norm.weight on rank 2 differs from rank 0's by up to 0.001" in str(err.value)
    merged, report = mr.merge(str(tmp_path / "drift"), tolerance=1e-2)
    assert report["max_replica_diff"] == pytest.approx(1e-3, rel=1e-3)
    np.testing.assert_array_equal(merged["model.norm.weight"], t["model.norm.weight"])  # rank 0's copy


@pytest.mark.parametrize("dp,shards", [(1, 4), (2, 3)])
def test_optimizer_sharded(tmp_path, dp, shards):
    t = full_tensors(1)
    sharded = {"model.embed_tokens.weight", "model.layers.0.mlp.experts.up_proj"}
    d = str(tmp_path / "zero")
    write_sharded(d, t, dp, shards, sharded)
    with open(os.path.join(d, "shard_map.rank1.json")) as f:
        m = json.load(f)
    assert m["rank"] == 1 and m["world_size"] == dp * shards
    assert m["tensors"]["model.embed_tokens.weight"]["offset"] == -(-10 // shards)  # rank 0 holds ceil(10/shards) rows
    merged, report = mr.merge(d)
    for n in FULL:
        np.testing.assert_array_equal(merged[n], t[n])
    assert (report["sharded"], report["replicated"]) == (2, 1)


def test_shard_coverage_and_rank_errors(tmp_path):
    t = full_tensors(2)
    d = str(tmp_path / "gap")
    write_sharded(d, t, 1, 3, {"model.embed_tokens.weight"})
    os.remove(os.path.join(d, "model.rank2.safetensors"))
    os.remove(os.path.join(d, "shard_map.rank2.json"))
    with pytest.raises(ValueError, match=r"shard_map.rank0.json: says rank 0 of 3, but the directory holds rank 0 of 2"):
        mr.merge(d)
    d2 = str(tmp_path / "hole")
    write_sharded(d2, t, 1, 2, {"model.embed_tokens.weight"})
    rank1 = {"model.embed_tokens.weight": t["model.embed_tokens.weight"][6:],  # rows 5 missing
             "model.layers.0.mlp.experts.up_proj": t["model.layers.0.mlp.experts.up_proj"],
             "model.norm.weight": t["model.norm.weight"]}
    mr.write_rank(d2, 1, 2, rank1, {"model.embed_tokens.weight": {"shape": (10, 4), "dim": 0, "offset": 6}})
    with pytest.raises(ValueError, match=r"model.embed_tokens.weight shards leave a gap at index 5 along dim 0"):
        mr.merge(d2)
    d3 = str(tmp_path / "missing")
    write_dp(d3, 2, t)
    os.remove(os.path.join(d3, "model.rank0.safetensors"))
    with pytest.raises(ValueError, match=r"rank files are not 0..1 \(missing model.rank0.safetensors\)"):
        mr.merge(d3)


def test_cli_writes_checkpoint(tmp_path, capsys):
    t = full_tensors(3)
    d = str(tmp_path / "run" / "checkpoints" / "step_00000050")
    write_sharded(d, t, 2, 2, {"model.embed_tokens.weight"})
    with open(os.path.join(d, "trainer_state.json"), "w") as f:
        json.dump({"step": 50, "seed": 3}, f)
    out = str(tmp_path / "merged")
    assert mr.main([d, "--out", out]) == 0
    assert "merged 4 ranks (2 replicated, 1 sharded tensors" in capsys.readouterr().out
    path = os.path.join(out, "checkpoints", "step_00000050")
    state = ck.verify(path)
    assert state["step"] == 50 and state["seed"] == 3 and state["merged_ranks"]["world_size"] == 4
    loaded = ck.load_tensors(path, ck.MODEL_FILE)
    for n in FULL:
        np.testing.assert_array_equal(loaded[n], t[n])
    assert mr.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "m2")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
