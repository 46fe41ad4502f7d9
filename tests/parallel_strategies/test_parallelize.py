"""The explicit parallel plan without processes: mesh groups, parameter slices, refusals in one line.
(The plan's numerics are held to one process by real msrun jobs in test_sharded_training.py.)"""
import dataclasses
import subprocess
import sys

import numpy as np
import pytest

import models
from parallel_strategies.mesh import build_mesh, mesh_ranks
from parallel_strategies.parallelize import ParallelPlan, check_supported, local_bytes, parallelize
from parallel_strategies.strategy import load_strategy
from tests.msrun_jobs import ROOT, env


def strategy(name="tiny_cpu_tp2", **pc):
    st = load_strategy(name)
    return dataclasses.replace(st, parallel_config=dataclasses.replace(st.parallel_config, **pc))


def test_mesh_groups_are_megatron_order():
    groups = mesh_ranks(dp=2, ep=1, tp=2)
    assert groups["tp"] == [[0, 1], [2, 3]]                # consecutive ranks: inside a node
    assert groups["data"] == [[0, 2], [1, 3]]
    groups = mesh_ranks(dp=2, ep=2, tp=1)
    assert groups["ep"] == [[0, 1], [2, 3]] and groups["expert_data"] == [[0, 2], [1, 3]]
    assert groups["data"] == [[0, 1, 2, 3]]
    mesh = build_mesh(2, 2, 1, rank=3, world=4, create=False)
    assert mesh.coords == (1, 1, 0) and mesh.data_rank == 3 and mesh.data_world == 4
    assert mesh.group("tp") is None and mesh.group("ep") == "mesh_ep_2_3"


def test_world_size_mismatch_is_one_line():
    with pytest.raises(ValueError, match=r"^parallel_config: data_parallel 2 x model_parallel 2 = 4 ranks, but 2 "):
        build_mesh(2, 1, 2, rank=0, world=2, create=False)


def _tiny(arch):
    cfg = models.get_config(arch, "tiny")
    return cfg, models.build_model(cfg, seed=0)


@pytest.mark.parametrize("arch", ["pangu_pro_moe", "pangu_ultra_moe"])
def test_plan_cuts_each_parameter_once_and_slices_tile_the_full_tensor(arch):
    cfg, model = _tiny(arch)
    full = {n: np.array(p.asnumpy()) for n, p in model.parameters_and_names()}
    slices = {}
    for rank in range(2):
        _, replica = _tiny(arch)
        plan = parallelize(replica, cfg, arch, strategy("tiny_cpu_tp2"), build_mesh(1, 1, 2, rank, 2, create=False),
                           log=lambda *_: None)
        local = {n: np.array(p.asnumpy()) for n, p in replica.parameters_and_names()}
        assert local.keys() == full.keys()                   # same names as one process
        for name, value in local.items():
            assert plan.full_shape(name, value.shape) == full[name].shape, name
            slices.setdefault(name, []).append(value)
    cut = [n for n in full if n in plan.cuts]
    assert any("q_proj" in n or "q_b_proj" in n for n in cut) and any("o_proj" in n for n in cut)
    assert "model.embed_tokens.weight" in cut and all("norm" not in n for n in cut)
    for name, parts in slices.items():
        dims = [d for d, _ in plan.cut(name)]
        joined = np.concatenate(parts, axis=dims[0]) if dims else parts[0]
        np.testing.assert_array_equal(joined, full[name], err_msg=name)


def test_plan_local_bytes_halve_the_sharded_parameters():
    cfg, model = _tiny("pangu_pro_moe")
    before = local_bytes(model)
    plan = parallelize(model, cfg, "pangu_pro_moe", strategy("tiny_cpu_ep2"),
                       build_mesh(1, 2, 1, 0, 2, create=False), log=lambda *_: None)
    experts = sum(int(np.prod(p.shape)) * 4 for n, p in model.parameters_and_names() if plan.is_expert(n))
    assert local_bytes(model) == before - experts            # this rank holds half of every expert stack


@pytest.mark.parametrize("change,message", [
    (dict(model_parallel=3, data_parallel=1), r"^model\.num_attention_heads: \d+ is not divisible by model_parallel 3"),
    (dict(expert_parallel=3, data_parallel=3, model_parallel=1), r"^model\.num_experts: 8 is not divisible by expert_parallel 3"),
    (dict(pipeline_stage=2), r"^parallel_config\.pipeline_stage: 2 is planned and simulated, not trained"),
    (dict(use_seq_parallel=True), r"^parallel_config\.use_seq_parallel: true .* set use_seq_parallel: false"),
])
def test_unsupported_or_indivisible_layouts_are_refused_in_one_line(change, message):
    cfg = models.get_config("pangu_pro_moe", "tiny")
    with pytest.raises(ValueError, match=message) as err:
        check_supported("pangu_pro_moe", cfg, strategy(**change))
    assert "\n" not in str(err.value)


def test_kv_heads_and_vocabulary_must_divide():
    st = strategy(model_parallel=4, data_parallel=1)
    cfg = dataclasses.replace(models.get_config("pangu_pro_moe", "tiny"), num_attention_heads=8, num_key_value_heads=2)
    with pytest.raises(ValueError, match=r"^model\.num_key_value_heads: 2 is not divisible by model_parallel 4"):
        check_supported("pangu_pro_moe", cfg, st)
    cfg = dataclasses.replace(models.get_config("pangu_pro_moe", "tiny"), vocab_size=111)
    with pytest.raises(ValueError, match=r"^model\.vocab_size: 111 is not divisible by model_parallel 2"):
        check_supported("pangu_pro_moe", cfg, strategy())


def test_mindvl_has_no_tensor_parallel_plan():
    with pytest.raises(ValueError, match=r"^parallel_config: mindvl has no tensor / expert parallel plan"):
        check_supported("mindvl", models.get_config("mindvl", "tiny"), strategy())


def test_trainer_refuses_a_strategy_for_another_world_size_before_writing(tmp_path):
    out = subprocess.run([sys.executable, "-m", "recipes.run", "recipes/pangu_pro_moe/pretrain_tiny.yaml",
                          "--set", "parallel.strategy=tiny_cpu_tp2", "--set", f"run.root={tmp_path}",
                          "--set", "run.name=x"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: parallel.strategy:") and "is for 2 devices but 1 process(es) run" in lines[-1]
    assert not (tmp_path / "x").exists()


def test_local_slice_keeps_scalars_and_is_c_ordered():
    cfg, model = _tiny("pangu_pro_moe")
    plan = parallelize(model, cfg, "pangu_pro_moe", strategy(), build_mesh(1, 1, 2, 1, 2, create=False),
                       log=lambda *_: None)
    assert plan.local("adam_step", np.array(3, np.int32)).shape == ()
    name = "model.layers.0.self_attn.o_proj.weight"                      # row-parallel: cut along dim 1
    full = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    mine = plan.local(name, full)
    assert mine.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(mine, full[:, 32:])
