import copy
import os

import pytest
import yaml

from parallel_strategies.simulate import check_memory
from parallel_strategies.strategy import STRATEGY_DIR, load_hardware, load_strategy, strategy_from_dict

from ps_helpers import config_for

SHIPPED = sorted(f[:-5] for f in os.listdir(STRATEGY_DIR) if f.endswith(".yaml"))


def _raw(name):
    with open(os.path.join(STRATEGY_DIR, name + ".yaml")) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_strategies_validate_and_fit(name):
    st = load_strategy(name)
    r = check_memory(st, config_for(st.model))
    assert r.memory.total < r.memory_limit and 0 < r.mfu < 1


def test_required_strategy_files_exist():
    for n in ("pangu_pro_moe_4k_baseline", "pangu_pro_moe_4k_optimised", "pangu_ultra_moe_6k", "mindvl_512",
              "tiny_cpu_dp2"):
        assert n in SHIPPED
    opt = load_strategy("pangu_pro_moe_4k_optimised")
    pc = opt.parallel_config
    assert (pc.model_parallel, pc.expert_parallel, pc.context_parallel, pc.pipeline_stage,
            pc.pp_interleave_num, opt.noop_layers) == (8, 2, 1, 5, 5, 2)
    base = load_strategy("pangu_pro_moe_4k_baseline").parallel_config
    assert (base.model_parallel, base.expert_parallel, base.context_parallel, base.pipeline_stage,
            base.pp_interleave_num) == (1, 8, 8, 6, 4)
    ultra = load_strategy("pangu_ultra_moe_6k")
    assert ultra.world_size == 6144 and ultra.parallel_config.model_parallel == 8 \
        and ultra.parallel_config.pipeline_stage == 16 and ultra.parallel_config.expert_parallel == 4


def _bad(edit, pro_full):
    d = copy.deepcopy(_raw("pangu_pro_moe_4k_optimised"))
    edit(d)
    with pytest.raises(ValueError) as e:
        check_memory(strategy_from_dict(d), pro_full)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_one_line_errors(pro_full):
    pc = "parallel_config"
    assert _bad(lambda d: d[pc].update(data_parallel=95), pro_full).startswith("parallel_config: data_parallel*")
    assert "40 attention heads not divisible by 16" in _bad(
        lambda d: (d[pc].update(model_parallel=16, data_parallel=48), d["cluster"].update(devices_per_node=8)),
        pro_full)
    msg = _bad(lambda d: d[pc].update(expert_parallel=3, moe_tp_extend_ep=False), pro_full)
    assert "64 experts not divisible by 3" in msg
    msg = _bad(lambda d: (d[pc].update(expert_parallel=16, moe_tp_extend_ep=False)), pro_full)
    assert msg.startswith("parallel_config.expert_parallel: MoGE has 8 expert groups")
    assert "use noop_layers: 2" in _bad(lambda d: d.update(noop_layers=0), pro_full)
    assert _bad(lambda d: d[pc].update(micro_batch_num=7), pro_full).startswith("parallel_config.micro_batch_num")
    assert _bad(lambda d: d.update(recompute="sometimes"), pro_full).startswith("recompute:")
    assert "did you mean" in _bad(lambda d: d[pc].update(data_paralel=4), pro_full)


def test_memory_limit_error(pro_full):
    def edit(d):
        d["parallel_config"].update(optimizer_shard=False, micro_batch_size=8)
        d["recompute"] = "none"
    msg = _bad(edit, pro_full)
    assert msg.startswith("memory:") and "GB HBM" in msg


def test_hardware_profiles_cite_sources():
    for name in ("ascend_910b", "ascend_910c_cm384"):
        hw = load_hardware(name)
        text = open(os.path.join(STRATEGY_DIR, "..", "hardware", name + ".yaml")).read()
        assert hw.peak_tflops > 100 and hw.hbm_gb == 64
        assert "MODELS.md" in text or "arXiv" in text
