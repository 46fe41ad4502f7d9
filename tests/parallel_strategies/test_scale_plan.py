"""scale-plan: the expert move plan is minimal (brute force), memory of the two remap schemes, refusals, --json."""
import itertools
import json
import os

import pytest

from parallel_strategies import inference as inf
from parallel_strategies import scale_plan as sc
from parallel_strategies.__main__ import main
from parallel_strategies.strategy import load_hardware

from ps_helpers import FIXTURES, fixture_config

PRO = os.path.join(FIXTURES, "pangu_pro_moe_full.json")


def _brute_min_moves(experts, devices, new_devices):
    """Fewest experts moved over EVERY balanced placement at the new size (each device E//N' or E//N'+1)."""
    old = sc.contiguous_placement(experts, devices)
    where = {e: d for d, held in enumerate(old) for e in held}
    base, extra = divmod(experts, new_devices)
    best = experts
    for assign in itertools.product(range(new_devices), repeat=experts):
        counts = [assign.count(d) for d in range(new_devices)]
        if sorted(counts) != sorted([base] * (new_devices - extra) + [base + 1] * extra):
            continue
        best = min(best, sum(1 for e, d in enumerate(assign) if where[e] != d))
    return best


@pytest.mark.parametrize("experts,devices,new", [(6, 2, 3), (6, 3, 2), (7, 3, 4), (7, 4, 3), (7, 2, 5), (6, 4, 6)])
def test_move_plan_moves_the_minimum_number_of_experts(experts, devices, new):
    plan = sc.move_plan(experts, devices, new)
    assert plan.n_moves == _brute_min_moves(experts, devices, new) == sc.min_moves_lower_bound(experts, devices, new)
    # the result is a balanced placement of every expert exactly once
    assert sorted(e for held in plan.new for e in held) == list(range(experts))
    assert max(map(len, plan.new)) - min(map(len, plan.new)) <= 1
    for e, a, b in plan.moves:
        assert e in plan.old[a] and e in plan.new[b] and a != b


def test_move_plan_by_hand():
    # 12 experts on 4 devices (3 each) -> 6 devices (2 each): each old device gives one, 4 moves
    plan = sc.move_plan(12, 4, 6)
    assert plan.n_moves == 4 and [len(x) for x in plan.new] == [2] * 6
    assert sorted(b for _, _, b in plan.moves) == [4, 4, 5, 5]
    # 6 -> 4: the 2 removed devices' 4 experts go one to each remaining device
    plan = sc.move_plan(12, 6, 4)
    assert plan.n_moves == 4 and sorted(a for _, a, _ in plan.moves) == [4, 4, 5, 5]


def _req(**kw):
    base = dict(cfg=fixture_config("pangu_pro_moe_full"), model_name="pro", hw=load_hardware("atlas_800i_a2"),
                precision=inf.Precision("int8"), devices=8, new_devices=16, tpot_s=0.1)
    base.update(kw)
    return sc.ScaleRequest(**base)


def test_bytes_moved_and_peak_memory_of_the_two_remap_schemes():
    rep = sc.scale(_req())
    per_expert = 3 * 5120 * 1344 * 1 * 48                    # int8, 48 MoE layers
    assert rep["expert_mb"] * 1e6 == pytest.approx(per_expert)
    assert rep["expert_moves"] == 32 and rep["expert_bytes_moved_gb"] * 1e9 == pytest.approx(32 * per_expert)
    rows = {r["strategy"]: r for r in rep["strategies"]}
    inplace, realloc = rows["ElasticMoE (in-place remap)"], rows["ElasticMoE with reallocate-and-copy"]
    # 8 -> 4 experts per old device: the old and the new buffer together hold 12, the remap max(8, 4) + one slab
    slab = 3 * 5120 * 1344
    assert (realloc["peak_memory_gb"] - inplace["peak_memory_gb"]) * 1e9 == pytest.approx(4 * per_expert - slab)
    assert rows["restart at the new size (vertical)"]["downtime_s"] > 0 and inplace["downtime_s"] == 0
    assert rows["add a whole replica (horizontal)"]["devices_after"] == 16
    assert inplace["throughput_during"] <= rep["throughput_before"]
    assert inplace["time_to_serve_s"] < rows["restart at the new size (vertical)"]["time_to_serve_s"]


def test_scale_refusals():
    with pytest.raises(ValueError, match="to: 8 equals the current size"):
        sc.scale(_req(new_devices=8))
    with pytest.raises(ValueError, match=r"devices: 128 for 64 experts; .* \(1 <= devices <= 64\)"):
        sc.scale(_req(new_devices=128))
    with pytest.raises(ValueError, match="to: 6 devices with attention TP 4; use a positive multiple of 4"):
        sc.scale(_req(tp=4, new_devices=6))
    with pytest.raises(ValueError, match="to: 1 devices cannot hold the .* running sequences' KV cache"):
        sc.scale(_req(new_devices=1))


def test_cli_scale_plan_json_and_refusal(capsys):
    rc = main(["scale-plan", "--config-json", PRO, "--hardware", "atlas_800i_a2", "--dtype", "int8", "--devices", "8",
               "--to", "12", "--tpot", "100ms", "--json"])
    out, _ = capsys.readouterr()
    rep = json.loads(out)
    assert rc == 0 and rep["expert_moves"] == rep["min_moves"] == len(rep["moves"])
    assert {m["dst"] for m in rep["moves"]} == {8, 9, 10, 11}
    rc = main(["scale-plan", "--config-json", PRO, "--hardware", "nosuch", "--devices", "8", "--to", "12"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: nosuch: no such file; choose one of")
