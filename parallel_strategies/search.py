"""Enumerate valid strategies for a model + cluster and rank them by simulated MFU."""
from __future__ import annotations

import itertools
from typing import Any, Iterator

from .shape import model_shape
from .simulate import Result, simulate
from .strategy import RECOMPUTE_POLICIES, Cluster, Hardware, ParallelConfig, Strategy, Training, validate_structure


def _divisors(n: int, cap: int) -> list[int]:
    return [d for d in range(1, min(n, cap) + 1) if n % d == 0]


def candidates(cfg: Any, model: dict, hw: Hardware, nodes: int, *, seq_length: int = 4096,
               batch_tokens: int = 4 * 1024 * 1024, micro_batch_size: int = 1,
               max_pp: int = 16, max_vpp: int = 6) -> Iterator[Strategy]:
    """Every structurally valid strategy: sizes, VPP, no-op padding, EP, extend-EP, hierarchical a2a.

    The micro-batch count is the one that brings the global batch closest to `batch_tokens`
    (rounded to a multiple of the pipeline depth), so all candidates train on ~the same batch.
    """
    s = model_shape(cfg)
    dpn = hw.devices_per_node
    world = nodes * dpn
    target_seqs = max(1, round(batch_tokens / seq_length))
    for tp in [d for d in (1, 2, 4, 8, 16) if d <= dpn and s.num_heads % d == 0]:
        for cp in (1, 2, 4, 8):
            for pp in range(1, max_pp + 1):
                if world % (tp * cp * pp):
                    continue
                dp = world // (tp * cp * pp)
                vs = [1] if pp == 1 else range(1, max_vpp + 1)
                for v in vs:
                    noop = (-s.num_layers) % (pp * v)
                    raw = max(1, round(target_seqs / (dp * micro_batch_size)))
                    m = max(pp, round(raw / pp) * pp) if v > 1 else max(pp, raw)
                    if abs(dp * micro_batch_size * m - target_seqs) > 0.25 * target_seqs:
                        continue  # this layout cannot train on ~the requested batch
                    eps = [e for e in _divisors(dp, 256) if s.is_moe and s.num_experts % e == 0] or [1]
                    for ep in eps:
                        exts = (False, True) if s.is_moe and tp > 1 else (False,)
                        for ext, hier in itertools.product(exts, (False, True) if ep > 1 else (False,)):
                            pc = ParallelConfig(data_parallel=dp, model_parallel=tp, pipeline_stage=pp,
                                                pp_interleave_num=v, expert_parallel=ep, context_parallel=cp,
                                                use_seq_parallel=tp > 1, micro_batch_num=m,
                                                micro_batch_size=micro_batch_size, optimizer_shard=True,
                                                moe_tp_extend_ep=ext, hierarchical_alltoall=hier)
                            st = Strategy(name=f"tp{tp}_cp{cp}_pp{pp}_vpp{v}_ep{ep}{'x' if ext else ''}"
                                               f"{'h' if hier else ''}", model=model, hardware=hw.name,
                                          cluster=Cluster(nodes, dpn), parallel_config=pc, noop_layers=noop,
                                          training=Training(seq_length=seq_length))
                            try:
                                validate_structure(st, s, hw)
                            except ValueError:
                                continue
                            yield st


def search(cfg: Any, model: dict, hw: Hardware, nodes: int, top: int = 10, **kw) -> tuple[list, int]:
    """Rank by MFU; for each layout use the least recompute that fits in HBM. Returns (top, n_valid)."""
    ranked: list[tuple[Result, Strategy]] = []
    n = 0
    for st in candidates(cfg, model, hw, nodes, **kw):
        try:
            results = []
            for rc in RECOMPUTE_POLICIES:
                st.recompute = rc
                results.append(simulate(st, cfg, hw, check=False))
                if results[-1].fits:
                    ranked.append((results[-1], st))
                    break
        except ValueError:  # a parameter the layout cannot split evenly (e.g. ViT FFN 3420 over TP8)
            continue
        n += 1
    ranked.sort(key=lambda x: -x[0].mfu)
    return ranked[:top], n
