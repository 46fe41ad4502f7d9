"""--json of the training subcommands: one JSON object each (printing only; the numbers are simulate's)."""
import json
import os

from parallel_strategies.__main__ import main
from parallel_strategies.simulate import simulate
from parallel_strategies.strategy import load_strategy

from ps_helpers import FIXTURES, fixture_config

PRO = os.path.join(FIXTURES, "pangu_pro_moe_full.json")


def test_simulate_json_has_mfu_step_time_and_breakdown_per_strategy(capsys):
    assert main(["simulate", "pangu_pro_moe_4k_optimised", "pangu_pro_moe_4k_baseline", "--config-json", PRO,
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    opt, base = rep["strategies"]
    r = simulate(load_strategy("pangu_pro_moe_4k_optimised"), fixture_config("pangu_pro_moe_full"))
    assert opt["name"] == "pangu_pro_moe_4k_optimised" and 0 < opt["mfu"] < 1
    assert opt["mfu"] == r.mfu and opt["step_time_s"] == r.step_time
    assert set(opt["breakdown_s"]) == {"compute", "tp_comm", "ep_comm", "cp_comm", "pp_p2p", "pp_bubble", "dp_sync",
                                       "optimizer"}
    assert opt["parallel_config"]["tp"] == 8 and base["parallel_config"]["cp"] == 8
    assert opt["memory_gb"]["total"] <= opt["memory_gb"]["limit"] and opt["fits"] is True


def test_search_json_ranked_by_mfu(capsys):
    assert main(["search", "--config-json", PRO, "--devices", "64", "--top", "3", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    mfus = [r["mfu"] for r in rep["ranked"]]
    assert rep["devices"] == 64 and rep["valid_layouts"] > 3 and len(mfus) == 3
    assert mfus == sorted(mfus, reverse=True) and all(r["world_size"] == 64 for r in rep["ranked"])


def test_search_that_fits_nowhere_is_refused_in_one_line(capsys):
    r1 = os.path.join(os.path.dirname(FIXTURES), "..", "..", "parallel_strategies", "models", "deepseek_r1_config.json")
    assert main(["search", "--config-json", r1, "--devices", "16", "--top", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: devices: none of the ") and err.endswith(
        " valid layouts on 16 x ascend_910b fits in 64 GB per device, even with full recompute; search more devices")
