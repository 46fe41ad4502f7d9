"""Markdown tables of simulation and search results."""
from __future__ import annotations


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
        ep = f"{pc.expert_parallel}{' extend' if pc.moe_tp_extend_ep else ''}{' hier' if pc.hierarchical_alltoall else ''}"
        lines.append(f"| {i} | {pc.model_parallel} | {pc.context_parallel} | {pc.pipeline_stage} | "
                     f"{pc.pp_interleave_num} | {ep} | {pc.data_parallel} | {st.noop_layers} | {pc.micro_batch_num} "
                     f"| {st.recompute} | {100 * r.mfu:.1f}% | {r.step_time:.2f} | {r.tokens_per_step / 1e6:.2f}M "
                     f"| {_gb(r.memory.total)} |")
    return "\n".join(lines)
