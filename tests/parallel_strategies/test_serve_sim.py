"""serve-sim: traces, determinism, and each P/D-Serve mechanism's effect on a small deployment."""
import json
import math
import os

import pytest

from parallel_strategies import inference as inf
from parallel_strategies import serve_sim as ss
from parallel_strategies.__main__ import main
from parallel_strategies.shape import model_shape
from parallel_strategies.strategy import load_hardware

from ps_helpers import FIXTURES, fixture_config

PRO = os.path.join(FIXTURES, "pangu_pro_moe_full.json")
MIX = (ss.Scenario("a", 0.5, 1500, 1000, 100, variants=8), ss.Scenario("b", 0.5, 4000, 1000, 50, variants=8))


def _setup(**kw):
    s = model_shape(fixture_config("pangu_pro_moe_full"))
    hw = load_hardware("atlas_800i_a2")
    base = dict(n_prefill=4, n_decode=2, prefill_inst=inf.Instance(8), decode_inst=inf.Instance(8),
                precision=inf.Precision("int8"), ttft_slo_s=2.0, tpot_slo_s=0.1, timeout_s=4.0)
    base.update(kw)
    return s, hw, ss.SimConfig(**base)


def test_traces_have_the_requested_rate_and_are_deterministic():
    for kind in ("poisson", "bursty", "tidal"):
        a = ss.make_trace(kind, 20.0, 600.0, MIX, seed=3)
        b = ss.make_trace(kind, 20.0, 600.0, MIX, seed=3)
        assert [(r.arrival, r.prompt, r.output, r.variant) for r in a] == \
            [(r.arrival, r.prompt, r.output, r.variant) for r in b]
        assert len(a) / 600.0 == pytest.approx(20.0, rel=0.15)
        assert all(r.prefix == 1000 and r.prompt > r.prefix for r in a)
    assert ss.make_trace("poisson", 20.0, 60.0, MIX, seed=4)[0].arrival != ss.make_trace("poisson", 20.0, 60.0, MIX,
                                                                                           seed=3)[0].arrival
    with pytest.raises(ValueError, match="arrival: 'spiky'; use poisson, bursty or tidal"):
        ss.make_trace("spiky", 1.0, 1.0, MIX)


def test_tidal_mix_shifts_between_scenarios():
    tr = ss.make_trace("tidal", 40.0, 400.0, MIX, seed=0, tide=0.0, mix_shift=0.9, tide_period=400.0)
    first = [r.scenario for r in tr if r.arrival < 100]
    later = [r.scenario for r in tr if 200 <= r.arrival < 300]
    assert first.count(0) > 2 * first.count(1) and later.count(1) > 2 * later.count(0)


def _run(system, trace, **kw):
    s, hw, cfg = _setup(**kw)
    tr = [ss.Request(r.id, r.arrival, r.scenario, r.prompt, r.prefix, r.output, r.variant) for r in trace]
    return ss.Simulation(s, hw, cfg, MIX, system).run(tr, until=trace[-1].arrival)


def test_every_request_is_accounted_for_and_runs_are_deterministic():
    tr = ss.make_trace("bursty", 20.0, 60.0, MIX, seed=1)
    for system in ss.SYSTEMS:
        r1 = _run(system, tr)
        r2 = _run(system, tr)
        assert r1 == r2
        assert r1["completed"] + r1["timeouts"] == r1["requests"] == len(tr)
        assert 0 <= r1["ttft_slo_attainment"] <= 1 and not math.isnan(r1["tpot_mean_ms"])


def test_contiguous_kv_transfer_is_faster_than_block_fixed():
    s, hw, cfg = _setup()
    prec = cfg.precision
    block = inf.kv_transfer_seconds(s, hw, prec, 4096, 1, block_tokens=128)
    contiguous = inf.kv_transfer_seconds(s, hw, prec, 4096, 1)
    nbytes = 4096 * 2 * 8 * 128 * 2 * 48
    assert contiguous == pytest.approx(nbytes / (25e9 * 0.8) + 10e-6)
    assert block == pytest.approx(nbytes / (25e9 * 0.8) + 48 * 32 * 2 * 10e-6)   # a write per block, layer, K/V
    tr = ss.make_trace("poisson", 10.0, 60.0, MIX, seed=2)
    sys_block, sys_cont = ss.SYSTEMS[1], ss.SYSTEMS[2]
    assert not sys_block.contiguous and sys_cont.contiguous
    assert _run(sys_cont, tr)["kv_transfer_mean_ms"] < 0.8 * _run(sys_block, tr)["kv_transfer_mean_ms"]


def test_per_scenario_groups_raise_the_prefix_hit_rate_when_the_cache_is_small():
    tr = ss.make_trace("poisson", 10.0, 120.0, MIX, seed=0)
    # room for ~4 prefixes per DP group: a mixed instance sees 16 variants, a group instance 8
    mixed = _run(ss.SYSTEMS[2], tr, prefix_cache_tokens=4000)
    groups = _run(ss.SYSTEMS[3], tr, prefix_cache_tokens=4000)
    assert groups["prefix_hit_rate"] > 1.3 * mixed["prefix_hit_rate"]
    full = _run(ss.SYSTEMS[2], tr)                       # the HBM-sized cache holds every prefix
    assert full["prefix_hit_rate"] > groups["prefix_hit_rate"]


def test_on_demand_forwarding_never_queues_behind_a_busy_instance_while_one_is_idle():
    # with reports every 5 s the scheduler keeps sending requests behind a busy instance that it
    # believes shorter while another one sits idle; an idle instance accepting on demand cannot
    tr = ss.make_trace("bursty", 80.0, 120.0, MIX, seed=5, burst=0.9, burst_period=20.0)
    on_reports = _run(ss.SYSTEMS[0], tr, report_interval=5.0)
    on_demand = _run(ss.SYSTEMS[1], tr, report_interval=5.0)
    assert on_reports["queued_while_idle"] > 0.02 * on_reports["requests"] and on_demand["queued_while_idle"] == 0
    assert on_demand["ttft_p50_ms"] < on_reports["ttft_p50_ms"]


def test_dynamic_ratio_moves_instances_towards_the_loaded_scenario():
    # the mix swings between the scenarios: a static per-scenario split overloads one group's prefill
    tr = ss.make_trace("tidal", 120.0, 200.0, MIX, seed=0, tide=0.3, mix_shift=0.9, tide_period=200.0)
    s, hw, cfg = _setup(n_prefill=4, n_decode=4, adjust_interval=5.0)
    sim = ss.Simulation(s, hw, cfg, MIX, ss.SYSTEMS[4])
    res = sim.run([ss.Request(r.id, r.arrival, r.scenario, r.prompt, r.prefix, r.output, r.variant) for r in tr],
                  until=200.0)
    static = _run(ss.SYSTEMS[3], tr, n_prefill=4, n_decode=4)
    assert res["ratio_moves"] > 0 and any("prefill" in m for _, m in sim.moves)
    assert static["ttft_slo_attainment"] < 0.9 and res["ttft_slo_attainment"] > static["ttft_slo_attainment"] + 0.1


def test_cli_serve_sim_json_plot_and_refusal(capsys, tmp_path):
    args = ["serve-sim", "--config-json", PRO, "--hardware", "atlas_800i_a2", "--duration", "30", "--rate", "10",
            "--prefill", "3", "--decode", "3", "--out", str(tmp_path), "--json"]
    assert main(args) == 0
    rep = json.loads(capsys.readouterr().out)
    assert len(rep["results"]) == len(ss.SYSTEMS) and os.path.getsize(rep["plot"]) > 10000
    for r in rep["results"]:
        assert {"e2e_output_tokens_per_s", "ttft_slo_attainment", "kv_transfer_mean_ms", "timeouts"} <= set(r)
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["results"] == rep["results"]      # deterministic under the seed
    rc = main(args[:-1] + ["--arrival", "spiky"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: arrival: 'spiky'; use poisson, bursty or tidal")
    rc = main(["serve-sim", "--config-json", PRO, "--hardware", "atlas_800i_a2", "--slo", "ttft=2s,tpot=1ms",
               "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: slo: tpot=1ms unreachable")
    deepseek = os.path.join(os.path.dirname(__file__), "..", "..", "parallel_strategies", "models",
                            "deepseek_r1_config.json")
    rc = main(["serve-sim", "--config-json", deepseek, "--hardware", "atlas_800i_a2", "--dtype", "bf16"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: decode: the model does not fit 8 dev") and "--decode-shape" in err
