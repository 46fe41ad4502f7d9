"""Markdown tables and JSON objects of simulation and search results."""
from __future__ import annotations

import dataclasses
import json


def _gb(x: float) -> str:
    return f"{x / 1e9:.1f}"


def result_table(rows) -> str:
    """rows: (strategy, Result, ModelShape, (total, active) params)."""
    head = ("| strategy | NPUs | TP/CP/PP/VPP/EP/DP | noop | recompute | step s | tokens/s | MFU | bubble "
            "| compute | TP | EP | CP | PP p2p | PP bubble | DP sync | mem GB (w/g/opt/act/res) | HBM |")
    lines = [head, "|" + "---|" * head.count("|")[:-1] if False else "|" + "---|" * (head.count("|") - 1)]
    for st, r, s, _ in rows:
        pc, t, m = st.parallel_config, r.time, r.memory
        sizes = f"{pc.model_parallel}/{pc.context_parallel}/{pc.pipeline_stage}/{pc.pp_interleave_num}/" \
                f"{pc.expert_parallel}{'x' if pc.moe_tp_extend_ep else ''}{'h' if pc.hierarchical_alltoall else ''}" \
                f"/{pc.data_parallel}"
        lines.append(
            f"| {st.name} | {r.world_size} | {sizes} | {st.noop_layers} | {st.recompute} | {r.step_time:.2f} "
            f"| {r.tokens_per_s:.3g} | {100 * r.mfu:.1f}% | {100 * r.bubble_fraction:.1f}% | {t.compute:.2f} "
            f"| {t.tp_comm:.2f} | {t.ep_comm:.2f} | {t.cp_comm:.2f} | {t.pp_p2p:.2f} | {t.pp_bubble:.2f} "
            f"| {t.dp_sync:.2f} | {_gb(m.total)} ({_gb(m.weights)}/{_gb(m.gradients)}/{_gb(m.optimizer_states)}/"
            f"{_gb(m.activations)}/{_gb(m.reserved)}) | {_gb(r.memory_limit)} |")
    return "\n".join(lines)


def search_table(ranked) -> str:
    head = "| # | TP | CP | PP | VPP | EP | DP | noop | m | recompute | MFU | step s | tokens/step | mem GB |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for i, (r, st) in enumerate(ranked, 1):
        pc = st.parallel_config
        ep = (f"{pc.expert_parallel}{' extend' if pc.moe_tp_extend_ep else ''}"
              f"{' hier' if pc.hierarchical_alltoall else ''}")
        lines.append(f"| {i} | {pc.model_parallel} | {pc.context_parallel} | {pc.pipeline_stage} | "
                     f"{pc.pp_interleave_num} | {ep} | {pc.data_parallel} | {st.noop_layers} | {pc.micro_batch_num} "
                     f"| {st.recompute} | {100 * r.mfu:.1f}% | {r.step_time:.2f} | {r.tokens_per_step / 1e6:.2f}M "
                     f"| {_gb(r.memory.total)} |")
    return "\n".join(lines)


def _result_dict(st, r) -> dict:
    pc = st.parallel_config
    return dict(
        name=st.name, world_size=r.world_size, hardware=st.hardware,
        parallel_config=dict(tp=pc.model_parallel, cp=pc.context_parallel, pp=pc.pipeline_stage,
                             vpp=pc.pp_interleave_num, ep=pc.expert_parallel, dp=pc.data_parallel,
                             micro_batch_num=pc.micro_batch_num, moe_tp_extend_ep=pc.moe_tp_extend_ep,
                             hierarchical_alltoall=pc.hierarchical_alltoall),
        noop_layers=st.noop_layers, recompute=st.recompute,
        mfu=r.mfu, step_time_s=r.step_time, tokens_per_step=r.tokens_per_step, tokens_per_s=r.tokens_per_s,
        bubble_fraction=r.bubble_fraction,
        breakdown_s=dataclasses.asdict(r.time),
        memory_gb={**{k: v / 1e9 for k, v in dataclasses.asdict(r.memory).items()}, "total": r.memory.total / 1e9,
                   "limit": r.memory_limit / 1e9},
        fits=r.fits)


def result_json(rows) -> str:
    """One JSON object: {"strategies": [...]} with mfu (0-1), step_time_s and the per-component breakdown."""
    return json.dumps(dict(strategies=[_result_dict(st, r) for st, r, _, _ in rows],
                           note="simulator predictions (parallel_strategies/simulate.py)"), indent=1)


def search_json(ranked, n_valid: int, model: dict, hw, devices: int) -> str:
    """One JSON object: the search's inputs, the number of valid layouts and the ranked results."""
    return json.dumps(dict(model=model, hardware=hw.name, devices=devices, valid_layouts=n_valid,
                           ranked=[_result_dict(st, r) for r, st in ranked],
                           note="simulator predictions (parallel_strategies/simulate.py)"), indent=1)
