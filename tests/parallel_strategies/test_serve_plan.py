"""serve-plan: decode batch under the TPOT SLO, prefill utilisation under TTFT, the P/D ratio, sizing, refusals."""
import json
import os

import pytest

from parallel_strategies import inference as inf
from parallel_strategies import serve_plan as sp
from parallel_strategies.__main__ import main
from parallel_strategies.shape import model_shape
from parallel_strategies.strategy import load_hardware

from ps_helpers import FIXTURES, fixture_config

DEEPSEEK = os.path.join(os.path.dirname(__file__), "..", "..", "parallel_strategies", "models",
                        "deepseek_r1_config.json")
PRO = os.path.join(FIXTURES, "pangu_pro_moe_full.json")


def _req(**kw):
    base = dict(cfg=fixture_config("pangu_pro_moe_full"), model_name="pro", hw=load_hardware("atlas_800i_a2"),
                slo=sp.SLO(2.0, 0.1), workload=sp.Workload("w", 2048, 256), precision=inf.Precision("int8"),
                max_devices=16)
    base.update(kw)
    return sp.PlanRequest(**base)


def test_pd_ratio_equalises_stage_throughput():
    assert sp.pd_ratio(10.0, 4.0) == 2.5
    hw = load_hardware("atlas_800i_a2")
    wl = sp.Workload("w", 2048, 256)
    d = sp.DecodeOption(inst=inf.Instance(8), batch=10, microbatches=1, step_s=0.05, tpot_s=0.05,
                        tokens_per_s_per_device=0.0, requests_per_s=10.0, memory=None, step=None)
    p = sp.PrefillOption(inst=inf.Instance(8), seqs=1, microbatches=1, batch_s=0.2, transfer_s=0.0, rho_max=0.5,
                         capacity_rps=8.0, tokens_per_s_per_device=0.0, memory=None, step=None)
    pl = sp.combine(d, p, wl, hw, load_rps=100.0)
    assert (pl.n_decode, pl.n_prefill) == (10, 25)                     # 10 x 10 rps = 25 x (0.5 x 8) rps
    assert pl.n_prefill * p.usable_rps == pytest.approx(pl.n_decode * d.requests_per_s)
    assert pl.prefill_utilisation == pytest.approx(0.5)
    # M/D/1 waiting at that utilisation: 0.5 x 0.2 / (2 x 0.5) = 0.1 s, + the 0.2 s batch
    assert pl.ttft_s == pytest.approx(0.3)
    one = sp.combine(d, p, wl, hw)                                      # one decode instance
    assert (one.n_decode, one.n_prefill) == (1, 3) and one.prefill_utilisation == pytest.approx(10 / 24)
    fixed = sp.combine(d, p, wl, hw, npus=56)                          # 8 + 2.5 x 8 = 28 devices per unit
    assert (fixed.n_decode, fixed.n_prefill) == (2, 5) and fixed.npus == 56


def test_plan_meets_slos_and_batch_is_largest_under_tpot():
    req = _req()
    plans = sp.plan(req)
    s, hw = model_shape(req.cfg), req.hw
    assert plans and all(p.decode.tpot_s <= 0.1 and p.ttft_s <= 2.0 for p in plans)
    e2e = [p.output_tokens_per_s_per_npu for p in plans]
    assert e2e == sorted(e2e, reverse=True)                             # best first
    best = plans[0].decode
    ctx = 2048 + 256 / 2
    over = inf.decode_step(s, hw, best.inst, req.precision, best.batch + 1, ctx, 0.0, best.microbatches)
    cap = inf.max_sequences(s, hw, best.inst, req.precision, 2048 + 256)
    assert best.batch == cap or inf.tpot(over) > 0.1                    # one more sequence breaks the SLO (or HBM)
    for p in plans:                                                     # the prefill pool keeps up with decode
        assert p.n_prefill * p.prefill.usable_rps >= p.requests_per_s * (1 - 1e-9)
        assert (p.n_prefill - 1) * p.prefill.usable_rps < p.requests_per_s
        assert p.prefill_utilisation <= p.prefill.rho_max + 1e-9


def test_pinned_paper_layout_deepseek_r1_ep320():
    """CloudMatrix-Infer's decode layout: 160 NPUs = 320 dies, DP320 attention + EP320, 96 per NPU, MTP."""
    cfg = json.load(open(DEEPSEEK))
    req = sp.PlanRequest(cfg=cfg, model_name="r1", hw=load_hardware("ascend_910c_cm384"), slo=sp.SLO(3.0, 0.05),
                         workload=sp.WORKLOADS["cm_infer_4k"], precision=inf.Precision("int8"), mtp_accept=0.7,
                         decode_shape=(320, 1), decode_batch=48, prefill_shape=(32, 1), microbatches=(1,))
    (p,) = sp.plan(req)
    d = p.to_dict()
    assert d["decode_instance"]["npus"] == 160 and d["decode_instance"]["batch_per_npu"] == 96
    assert d["decode_instance"]["ep"] == 320 and d["prefill_instance"]["ep"] == 32
    assert d["decode_tokens_per_s_per_npu"] == pytest.approx(96 / (d["tpot_ms"] / 1e3), rel=1e-9)
    assert d["tpot_ms"] < 50


def test_refusals_say_what_to_change():
    with pytest.raises(ValueError, match=r"slo: tpot=1ms unreachable .* raise tpot to >= \d+ms"):
        sp.plan(_req(slo=sp.SLO(2.0, 0.001)))
    with pytest.raises(ValueError, match=r"slo: ttft=10ms unreachable .* raise ttft to >= \d+ms"):
        sp.plan(_req(slo=sp.SLO(0.01, 0.1)))
    with pytest.raises(ValueError, match=r"model: .* does not fit on 4 x 48 GB devices of atlas_300i_duo; "
                                         r"use --dtype int8"):
        sp.plan(_req(cfg=json.load(open(DEEPSEEK)), hw=load_hardware("atlas_300i_duo"), max_devices=4,
                     precision=inf.Precision("fp16", "fp16")))
    with pytest.raises(ValueError, match=r"npus: 3 NPUs cannot hold one decode and one prefill instance; "
                                         r"use --npus >= 4"):
        sp.plan(_req(npus=3))
    for bad, msg in (("ttft=2s", "slo: 'ttft=2s'; write --slo"),
                     ("ttft=2s,tpot=fast", "slo: tpot='fast' is not a duration"),
                     ("ttft=2s,tpot=50ms,x=1", "slo: 'ttft=2s,tpot=50ms,x=1'")):
        with pytest.raises(ValueError, match=msg):
            sp.parse_slo(bad)
    assert sp.parse_slo("ttft=2s,tpot=50") == sp.SLO(2.0, 0.05)
    with pytest.raises(ValueError, match="workload: 'prompt=1'; use one of"):
        sp.parse_workload("prompt=1")


def _cli(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_json_is_one_object_best_plan_first(capsys):
    rc, out, _ = _cli(capsys, "serve-plan", "--config-json", PRO, "--hardware", "atlas_800i_a2", "--slo",
                      "ttft=2s,tpot=100ms", "--dtype", "int8", "--max-devices", "16", "--json")
    assert rc == 0
    rep = json.loads(out)
    plans = rep["plans"]
    for key in ("prefill_tokens_per_s_per_npu", "decode_tokens_per_s_per_npu", "ttft_ms", "tpot_ms", "pd_ratio",
                "decode_instance", "prefill_instance"):
        assert key in plans[0]
    assert {"devices", "tp", "dp", "ep", "batch_per_npu"} <= set(plans[0]["decode_instance"])
    assert {"prefill_instances", "decode_instances"} <= set(plans[0]["pd_ratio"])
    e2e = [p["e2e_output_tokens_per_s_per_npu"] for p in plans]
    assert e2e == sorted(e2e, reverse=True) and all(p["tpot_ms"] <= 100 for p in plans)


def test_cli_refusals_are_one_line_and_exit_2(capsys):
    cases = [
        (["--hardware", "nosuch"], "error: nosuch: no such file; choose one of"),
        (["--hardware", "atlas_300i_duo"], "error: dtype: bf16 is not supported on atlas_300i_duo"),
        (["--hardware", "atlas_800i_a2", "--slo", "ttft=2s,tpot=2ms"], "error: slo: tpot=2ms unreachable"),
    ]
    for extra, msg in cases:
        args = ["serve-plan", "--config-json", PRO, "--slo", "ttft=2s,tpot=100ms", "--max-devices", "16"] + extra
        rc, out, err = _cli(capsys, *args)
        assert rc == 2 and err.startswith(msg) and err.count("\n") == 1, err
    rc, _, err = _cli(capsys, "serve-plan", "--hardware", "atlas_800i_a2", "--slo", "ttft=2s,tpot=50ms")
    assert rc == 2 and err.startswith("error: model: give exactly one of --model ARCH or --config-json FILE")
