import pytest

import models
from parallel_strategies.apply import parameter_layouts
from parallel_strategies.launch import msrun_commands
from parallel_strategies.search import search
from parallel_strategies.shape import parameter_shapes
from parallel_strategies.simulate import simulate
from parallel_strategies.strategy import load_hardware, load_strategy

from ps_helpers import config_for, fixture_config, registry_config


def _pro(name="pangu_pro_moe_4k_optimised"):
    st = load_strategy(name)
    return st, config_for(st.model)


def test_vpp_lowers_bubble_as_predicted():
    st, cfg = _pro()
    pc = st.parallel_config
    for v in (1, 5):
        pc.pp_interleave_num = v
        st.noop_layers = (-48) % (pc.pipeline_stage * v)
        r = simulate(st, cfg)
        p, m = pc.pipeline_stage, pc.micro_batch_num
        # the bubble is (p-1)/(v*m) of the busy pipeline time, exactly
        assert r.bubble_fraction == pytest.approx((p - 1) / (v * m), rel=1e-9)
        assert r.time.pp_bubble == pytest.approx((p - 1) / v * (r.stage_time + r.time.pp_p2p / m), rel=1e-9)


def test_optimised_pro_beats_baseline_clearly():
    base, cfg = _pro("pangu_pro_moe_4k_baseline")
    opt, _ = _pro()
    rb, ro = simulate(base, cfg), simulate(opt, cfg)
    assert ro.mfu > 1.2 * rb.mfu and ro.step_time < rb.step_time
    assert ro.bubble_fraction < rb.bubble_fraction


def test_memory_within_10_percent_of_hand_calculation():
    """docs/parallel_strategies.md, 'Hand check': Pro optimised, pipeline stage 0 (10 layers + embedding)."""
    st, cfg = _pro()
    r = simulate(st, cfg)
    tp = 8
    attn = (5120 * 5120 + 5120 + 2 * (1024 * 5120 + 1024) + 5120 * 5120) / tp + 5120 + 2 * 5120
    experts = 4 * 3 * 5120 * 1344                       # 64 experts over TP8 x EP2: 4 whole experts
    shared = 3 * 5120 * 5376 / tp
    router = 64 * 5120 + 64
    n_exp, n_rest = 10 * experts, 10 * (attn + shared + router) + 153376 * 5120 / tp
    n = n_exp + n_rest
    zero = n_rest / 96 + n_exp / 48                     # ZeRO groups: DP for dense, DP/EP for experts
    weights, grads, states = 2 * n + 4 * zero, 4 * n, 8 * zero
    per_token_layer = 2 * (2 * 640 + 896 + 640) + 4 * 5 + 2 * (2 * 5120 + 3 * 1344) + 4 * 64 \
        + 2 * 3 * 672 - 2 * (1344 + 672) + 2 * 640          # selective recompute keeps these
    in_flight = ((5 - 1) * 2 + (5 - 1) * 5 + 1) / 5       # interleaved 1F1B warm-up of stage 0
    act = in_flight * 10 * 4096 * per_token_layer
    hand = weights + grads + states + act + 4e9
    stage0 = r.stage_memory[0]
    assert stage0.total == pytest.approx(hand, rel=0.10)


@pytest.mark.parametrize("arch,strategy", [("pangu_pro_moe", "pangu_pro_moe_4k_optimised"),
                                           ("pangu_pro_moe", "pangu_pro_moe_4k_baseline"),
                                           ("pangu_ultra_moe", "pangu_ultra_moe_6k")])
def test_every_parameter_of_full_presets_gets_a_dividing_layout(arch, strategy):
    st = load_strategy(strategy)
    cfg = config_for(st.model)
    shapes = parameter_shapes(cfg)
    layouts = parameter_layouts(st, cfg)
    assert [pl.name for pl in layouts] == [n for n, _ in shapes]
    assert all(pl.logical for pl in layouts)
    for pl in layouts:
        assert all(d % k == 0 for d, k in zip(pl.shape, pl.shards)), pl
        assert 0 <= pl.stage < st.parallel_config.pipeline_stage
    by = {pl.name: pl for pl in layouts}
    pc = st.parallel_config
    if pc.model_parallel > 1:
        assert by["model.layers.0.self_attn.q_proj.weight" if arch == "pangu_pro_moe"
                  else "model.layers.0.self_attn.q_b_proj.weight"].shards[0] == pc.model_parallel
    owners = pc.expert_parallel * (pc.model_parallel if pc.moe_tp_extend_ep else 1)
    assert by["model.layers.5.mlp.experts.gate_proj"].shards[0] == owners


def test_tiny_model_parameters_get_layouts_and_stages():
    st = load_strategy("tiny_cpu_dp2")
    cfg = config_for(st.model)
    cfg_obj = registry_config("pangu_pro_moe", "tiny")
    layouts = parameter_layouts(st, cfg_obj)
    n = len(list(models.build_model(cfg_obj).get_parameters()))
    assert len(layouts) == n and all(pl.replicas == 2 for pl in layouts)   # pure DP x2


def test_search_ranks_valid_strategies_that_fit():
    cfg = fixture_config("pangu_pro_moe_full")
    hw = load_hardware("ascend_910b")
    top, n = search(cfg, {"arch": "pangu_pro_moe", "preset": "full"}, hw, nodes=64, top=5)
    assert n > 20 and len(top) == 5
    mfus = [r.mfu for r, _ in top]
    assert mfus == sorted(mfus, reverse=True)
    assert all(r.fits and r.world_size == 512 for r, _ in top)


def test_msrun_command_single_node_printed_and_exact():
    st = load_strategy("tiny_cpu_dp2")
    (cmd,) = msrun_commands(st, "recipes/pangu_pro_moe/tiny.yaml", master_port=8200, repo="/repo",
                            venv="/repo/.venv")
    assert cmd.argv[:8] == ["msrun", "--worker_num=2", "--local_worker_num=2", "--master_addr=127.0.0.1",
                            "--master_port=8200", "--node_rank=0", "--log_dir=runs/msrun/tiny_cpu_dp2",
                            "--join=True"]
    assert cmd.argv[8:12] == ["python", "-m", "recipes.run", "recipes/pangu_pro_moe/tiny.yaml"]
    # the strategy's rows per data-parallel rank become the recipe's; an explicit --set comes later and wins
    assert cmd.argv[12:16] == ["--set", f"parallel.strategy={st.path}", "--set", "train.micro_batch_size=2"]
    (resumed,) = msrun_commands(st, "r.yaml", extra_sets=("train.micro_batch_size=3",), resume=True)
    assert resumed.argv[-3:] == ["--set", "train.micro_batch_size=3", "--resume"]
    assert cmd.shell.startswith("cd /repo && . /repo/.venv/bin/activate && msrun ")


def test_msrun_multi_node_hostfile(tmp_path):
    st = load_strategy("mindvl_512")
    hf = tmp_path / "hosts"
    hf.write_text("# 64 nodes\n" + "".join(f"node{i} slots=8\n" for i in range(64)))
    cmds = msrun_commands(st, "r.yaml", hostfile=str(hf), repo="/repo")
    assert len(cmds) == 64
    assert cmds[5].host == "node5" and "--node_rank=5" in cmds[5].argv and "--master_addr=node0" in cmds[5].argv
    assert "--worker_num=512" in cmds[5].argv and "--local_worker_num=8" in cmds[5].argv
    assert cmds[5].shell.startswith("ssh node5 ")
    (one,) = msrun_commands(st, "r.yaml", node_rank=3, master_addr="10.0.0.1")
    assert "--node_rank=3" in one.argv and "--master_addr=10.0.0.1" in one.argv
    with pytest.raises(ValueError, match="hostfile: 2 hosts"):
        hf.write_text("a\nb\n")
        msrun_commands(st, "r.yaml", hostfile=str(hf))


def test_cli_simulate_prints_table(capsys):
    from parallel_strategies.__main__ import main
    args = ["simulate", "pangu_pro_moe_4k_optimised"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| pangu_pro_moe_4k_optimised | 3840 | 8/1/5/5/2xh/96 |" in out


def _ascend():
    try:
        import mindspore as ms
        return ms.hal.is_available("Ascend") if hasattr(ms, "hal") else False
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.ascend
@pytest.mark.skipif(not _ascend(), reason="needs an Ascend NPU + CANN: compiles the job with "
                                          "MS_SIMULATION_LEVEL=1 through `launch --sim-level 1`")
def test_ascend_dry_run_compiles_optimised_pro():  # pragma: no cover - Ascend only
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "parallel_strategies", "launch", "--recipe",
                        "recipes/pangu_pro_moe/pretrain.yaml", "--strategy", "pangu_pro_moe_4k_optimised",
                        "--sim-level", "1", "--node-rank", "0"], capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-2000:]
