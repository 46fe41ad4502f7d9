"""Elastic scaling of a running EP deployment from N to N +- k devices (ElasticMoE, arXiv:2510.02613).

ElasticMoE scales a live MoE instance by a few devices without a restart: weights and KV cache
already in HBM are reused in place (zero-copy), new devices get their weights peer-to-peer from the
running ones over the scale-up link, and experts are redistributed through virtual-memory remapping
instead of reallocating the expert buffers. This module predicts, for one decode instance:

* the **expert move plan**: a balanced placement at the new size that moves the fewest experts.
  Each device d holds c_d experts (contiguous blocks) and may hold cap_d after the change (E / N'
  rounded, the E mod N' larger capacities going to the kept devices that hold the most now). A kept
  device keeps min(c_d, cap_d) of its experts; its surplus and all experts of removed devices move
  to devices with room. Any plan must move at least sum over devices of max(0, c_d - cap_d)
  experts for the best capacity assignment, and this plan moves exactly that (tested against brute
  force); bytes = moves x 3 H F x weight bytes x MoE layers;
* **peak memory per device** during the change: reallocate-and-copy holds the old and the new
  expert buffer at once (c_d + cap_d experts); in-place remap holds max(c_d, cap_d) + one expert
  slab in flight;
* **time to serve at the new size** and **throughput during the transition** (time-weighted: the
  old configuration serves on, slowed by the HBM share the copies take while they run; decode is
  HBM-bound and EP-synchronous) for ElasticMoE, for
  adding a whole replica (horizontal scaling: N more devices, weights from storage) and for a
  restart at the new size (vertical scaling with downtime, KV cache lost).
All figures are model predictions; `storage_gbs` and `init_s` are inputs, not measurements.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from . import inference as inf
from .serve_plan import model_from_args, parse_duration
from .shape import model_shape
from .strategy import Hardware, load_hardware


# --------------------------------------------------------------------------- expert placement

def contiguous_placement(experts: int, devices: int) -> list[list[int]]:
    """Experts per device in contiguous blocks, the first E mod N devices holding one more."""
    if devices < 1 or devices > experts:
        raise ValueError(f"devices: {devices} for {experts} experts; scale-plan places one or more whole experts "
                         f"per device (1 <= devices <= {experts})")
    base, extra = divmod(experts, devices)
    out, e = [], 0
    for d in range(devices):
        n = base + (1 if d < extra else 0)
        out.append(list(range(e, e + n)))
        e += n
    return out


@dataclass
class MovePlan:
    """Where every expert goes: moves are (expert, from device, to device); devices >= N' are removed,
    devices >= N are new."""
    old: list
    new: list
    moves: list

    @property
    def n_moves(self) -> int:
        return len(self.moves)


def capacities(counts: list[int], experts: int, new_devices: int) -> list[int]:
    """New capacity per device: E // N', the E mod N' larger ones to the kept devices holding the most."""
    base, extra = divmod(experts, new_devices)
    cap = [base] * new_devices
    kept = min(len(counts), new_devices)
    order = sorted(range(new_devices), key=lambda d: (-(counts[d] if d < kept else -1), d))
    for d in order[:extra]:
        cap[d] += 1
    return cap


def move_plan(experts: int, devices: int, new_devices: int) -> MovePlan:
    """Minimal-move redistribution of `experts` from `devices` to `new_devices` (the last
    `devices - new_devices` are removed when shrinking; new ones are appended when growing)."""
    old = contiguous_placement(experts, devices)
    contiguous_placement(experts, new_devices)          # validates the new size
    counts = [len(x) for x in old]
    cap = capacities(counts, experts, new_devices)
    new = [[] for _ in range(new_devices)]
    leaving: list[tuple[int, int]] = []                 # (expert, from)
    for d, held in enumerate(old):
        if d < new_devices:
            new[d] = held[:cap[d]]
            leaving += [(e, d) for e in held[cap[d]:]]
        else:
            leaving += [(e, d) for e in held]
    moves = []
    for d in range(new_devices):
        while len(new[d]) < cap[d]:
            e, src = leaving.pop(0)
            new[d].append(e)
            moves.append((e, src, d))
    assert not leaving and sorted(sum(new, [])) == list(range(experts))
    return MovePlan(old=old, new=new, moves=moves)


def min_moves_lower_bound(experts: int, devices: int, new_devices: int) -> int:
    """The fewest experts any balanced placement at the new size must move (over all capacity choices)."""
    counts = [len(x) for x in contiguous_placement(experts, devices)]
    cap = capacities(counts, experts, new_devices)
    return sum(max(0, counts[d] - (cap[d] if d < new_devices else 0)) for d in range(devices))


# --------------------------------------------------------------------------- costs

@dataclass
class ScaleRequest:
    cfg: object
    model_name: str
    hw: Hardware
    precision: inf.Precision
    devices: int              # N: the running decode instance
    new_devices: int          # N'
    tp: int = 1               # attention TP of the instance
    batch: int = 0            # sequences per DP group running (0 = the largest under the TPOT SLO)
    context: int = 4096 + 256
    tpot_s: float = 0.05
    storage_gbs: float = 2.0  # per-device weight-loading bandwidth from storage (input, assumption)
    init_s: float = 30.0      # starting a runtime on a device + graph compile (input, assumption)


def _p2p_bw(hw: Hardware, devices: int) -> float:
    eff = hw.bandwidth_efficiency
    if devices <= hw.devices_per_node:
        return hw.intra_node_bandwidth_gbs * 1e9 * eff
    if devices <= hw.supernode_devices:
        return hw.supernode_bandwidth_gbs * 1e9 * eff
    return hw.inter_node_bandwidth_gbs * 1e9 * eff


def scale(req: ScaleRequest) -> dict:
    s, hw, prec = model_shape(req.cfg), req.hw, req.precision
    inf.check_precision(prec, hw)
    N, N2, tp = req.devices, req.new_devices, req.tp
    if not s.is_moe:
        raise ValueError(f"model: {req.model_name} has no experts; scale-plan redistributes MoE experts")
    if N2 == N:
        raise ValueError(f"to: {N2} equals the current size; give a different device count")
    for what, n in (("devices", N), ("to", N2)):
        if n < 1 or n % tp:
            raise ValueError(f"{what}: {n} devices with attention TP {tp}; use a positive multiple of {tp}")
    old_i, new_i = inf.Instance(N, tp), inf.Instance(N2, tp)
    plan = move_plan(s.num_experts, N, N2)
    moe_layers = sum(1 for i in range(s.num_layers) if s.is_moe_layer(i))
    slab = 3 * s.hidden_size * s.moe_ffn * prec.weight_bytes           # one expert of one layer
    per_expert = slab * moe_layers
    moved_bytes = plan.n_moves * per_expert

    # the running batch: given, or the largest per DP group whose step meets the TPOT SLO and fits
    batch = req.batch or _batch_under_slo(s, hw, old_i, prec, req.context, req.tpot_s)
    if batch < 1:
        raise ValueError(f"model: {req.model_name} does not fit {old_i.label()} on {hw.name} with a "
                         f"{req.context}-token request; use --dtype int8 or more devices")
    cap_new = inf.max_sequences(s, hw, new_i, prec, req.context)
    total_seqs = batch * old_i.dp
    if N2 < N and total_seqs > cap_new * new_i.dp:
        raise ValueError(f"to: {N2} devices cannot hold the {total_seqs} running sequences' KV cache "
                         f"(at most {cap_new * new_i.dp}); drain requests first or scale to more devices")
    if cap_new < 1:
        raise ValueError(f"to: {req.model_name} does not fit {new_i.label()} on {hw.name}; use more devices")
    new_batch = min(cap_new, math.ceil(total_seqs / new_i.dp)) if N2 < N else batch

    step_old = inf.decode_step(s, hw, old_i, prec, batch, req.context).seconds
    step_new = inf.decode_step(s, hw, new_i, prec, new_batch, req.context).seconds
    thr_old, thr_new = old_i.dp * batch / step_old, new_i.dp * new_batch / step_new

    # memory per device during the change
    w = inf.weight_bytes(s, old_i, prec)
    other_w = sum(v for k, v in w.items() if k != "routed_experts")
    kv = max(batch, new_batch) * req.context * inf.kv_values_per_token_layer(s, tp) * prec.kv_bytes \
        * len(inf.layer_kinds(s))
    base = other_w + kv + hw.reserved_gb * 1e9
    counts_old = [len(x) for x in plan.old] + [0] * max(0, N2 - N)
    counts_new = [len(x) for x in plan.new] + [0] * max(0, N - N2)
    realloc = max(base + (a + b) * per_expert for a, b in zip(counts_old, counts_new))
    inplace = max(base + max(a, b) * per_expert + (slab if a != b else 0) for a, b in zip(counts_old, counts_new))

    # peer-to-peer traffic: per device out / in bytes (experts, plus non-expert weights for new devices
    # and the KV cache of the requests on removed devices)
    out_b = [0.0] * max(N, N2)
    in_b = [0.0] * max(N, N2)
    for e, a, b in plan.moves:
        out_b[a] += per_expert
        in_b[b] += per_expert
    for d in range(N, N2):                  # new device: non-expert weights from a running peer
        in_b[d] += other_w
        out_b[d % N] += other_w
    kv_moved = 0.0
    if N2 < N:                              # requests of removed DP groups move with their KV
        per_seq = req.context * inf.kv_values_per_token_layer(s, tp) * prec.kv_bytes * len(inf.layer_kinds(s))
        for g in range(new_i.dp, old_i.dp):
            for d in range(g * tp, (g + 1) * tp):
                out_b[d] += batch * per_seq
                in_b[d % N2] += batch * per_seq
                kv_moved += batch * per_seq
    bw = _p2p_bw(hw, max(N, N2))
    transfer_s = max(max(o, i) for o, i in zip(out_b, in_b)) / bw
    # decode is HBM-bound: the copy reads/writes HBM at link speed on the busiest device, slowing
    # the whole EP-synchronous instance by that share of the HBM bandwidth while it runs
    hbm = hw.hbm_bandwidth_gbs * 1e9 * hw.bandwidth_efficiency
    slowdown = 1 + bw / hbm
    warm = req.init_s if N2 > N else 0.0      # new devices start their runtime while the old config serves
    elastic_ready = warm + transfer_s
    elastic_during = (warm * thr_old + transfer_s * thr_old / slowdown) / elastic_ready if elastic_ready else thr_old
    w_new_dev = sum(inf.weight_bytes(s, new_i, prec).values())
    w_old_dev = sum(w.values())
    load_new = w_new_dev / (req.storage_gbs * 1e9)
    rows = [
        dict(strategy="ElasticMoE (in-place remap)", devices_after=N2, time_to_serve_s=elastic_ready,
             downtime_s=0.0, throughput_during=elastic_during, throughput_after=thr_new,
             tpot_after_ms=1e3 * step_new, peak_memory_gb=inplace / 1e9, bytes_moved_gb=(sum(out_b)) / 1e9),
        dict(strategy="ElasticMoE with reallocate-and-copy", devices_after=N2, time_to_serve_s=elastic_ready,
             downtime_s=0.0, throughput_during=elastic_during, throughput_after=thr_new,
             tpot_after_ms=1e3 * step_new, peak_memory_gb=realloc / 1e9, bytes_moved_gb=(sum(out_b)) / 1e9),
        dict(strategy="restart at the new size (vertical)", devices_after=N2, time_to_serve_s=req.init_s + load_new,
             downtime_s=req.init_s + load_new, throughput_during=0.0, throughput_after=thr_new,
             tpot_after_ms=1e3 * step_new, peak_memory_gb=(w_new_dev + hw.reserved_gb * 1e9) / 1e9,
             bytes_moved_gb=w_new_dev * N2 / 1e9),
    ]
    if N2 > N:
        rows.append(dict(strategy="add a whole replica (horizontal)", devices_after=2 * N,
                         time_to_serve_s=req.init_s + w_old_dev / (req.storage_gbs * 1e9), downtime_s=0.0,
                         throughput_during=thr_old, throughput_after=2 * thr_old, tpot_after_ms=1e3 * step_old,
                         peak_memory_gb=(base + counts_old[0] * per_expert) / 1e9,
                         bytes_moved_gb=w_old_dev * N / 1e9))
    for r in rows:
        r["fits"] = r["peak_memory_gb"] <= hw.hbm_gb
        r["throughput_per_device_after"] = r["throughput_after"] / r["devices_after"]
    return dict(
        model=req.model_name, hardware=hw.name, precision=prec.weights, devices=N, to=N2, tp=tp,
        batch_per_dp=batch, batch_per_dp_after=new_batch, context=req.context,
        experts=s.num_experts, moe_layers=moe_layers, expert_mb=per_expert / 1e6,
        expert_moves=plan.n_moves, min_moves=min_moves_lower_bound(s.num_experts, N, N2),
        expert_bytes_moved_gb=moved_bytes / 1e9, kv_bytes_moved_gb=kv_moved / 1e9,
        p2p_bandwidth_gbs=bw / 1e9, transfer_s=transfer_s, hbm_gb=hw.hbm_gb,
        throughput_before=thr_old, tpot_before_ms=1e3 * step_old,
        assumptions=dict(storage_gbs=req.storage_gbs, init_s=req.init_s),
        note="model predictions (parallel_strategies/scale_plan.py + inference.py), not measurements",
        strategies=rows,
        moves=[dict(expert=e, src=a, dst=b) for e, a, b in plan.moves])


def _batch_under_slo(s, hw, inst, prec, context, tpot_s) -> int:
    cap = inf.max_sequences(s, hw, inst, prec, context)
    lo, hi = 0, cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if inf.decode_step(s, hw, inst, prec, mid, context).seconds <= tpot_s:
            lo = mid
        else:
            hi = mid - 1
    return lo


def table(rep: dict) -> str:
    head = ("| strategy | devices after | time to serve s | downtime s | tok/s during | tok/s after "
            "| tok/s/device after | TPOT after ms | peak mem GB/device | fits | GB moved |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rep["strategies"]:
        lines.append(f"| {r['strategy']} | {r['devices_after']} | {r['time_to_serve_s']:.1f} | {r['downtime_s']:.1f} "
                     f"| {r['throughput_during']:.0f} | {r['throughput_after']:.0f} "
                     f"| {r['throughput_per_device_after']:.0f} | {r['tpot_after_ms']:.1f} | {r['peak_memory_gb']:.1f} "
                     f"| {'yes' if r['fits'] else 'NO'} | {r['bytes_moved_gb']:.1f} |")
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser("scale-plan", help="scale a running EP deployment from N to N+-k devices (ElasticMoE)")
    p.add_argument("--model")
    p.add_argument("--preset", default="full")
    p.add_argument("--config-json")
    p.add_argument("--hardware", required=True)
    p.add_argument("--devices", type=int, required=True, help="current decode instance size N (devices)")
    p.add_argument("--to", type=int, required=True, help="new size N +- k (devices)")
    p.add_argument("--tp", type=int, default=1, help="attention TP of the instance")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--batch", type=int, default=0, help="sequences per DP group running (default: max under --tpot)")
    p.add_argument("--context", type=int, default=4096 + 256, help="tokens per running request")
    p.add_argument("--tpot", default="50ms", help="TPOT SLO that sets the running batch")
    p.add_argument("--storage-gbs", type=float, default=2.0, help="weight loading per device from storage (assumption)")
    p.add_argument("--init-s", type=float, default=30.0, help="runtime start + graph compile on a device (assumption)")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    cfg, name = model_from_args(args)
    hw = load_hardware(args.hardware)
    for what, v in (("storage-gbs", args.storage_gbs), ("init-s", args.init_s)):
        if v < 0 or (what == "storage-gbs" and v == 0):
            raise ValueError(f"{what}: {v}; give a positive number")
    req = ScaleRequest(cfg=cfg, model_name=name, hw=hw,
                       precision=inf.Precision(args.dtype, "bf16" if "bf16" in tuple(hw.matmul_dtypes) else "fp16"),
                       devices=args.devices, new_devices=args.to, tp=args.tp, batch=args.batch, context=args.context,
                       tpot_s=parse_duration(args.tpot, "tpot"), storage_gbs=args.storage_gbs, init_s=args.init_s)
    rep = scale(req)
    if args.json:
        print(json.dumps(rep, indent=1))
        return 0
    print(f"{name} on {hw.name}, {rep['precision']} weights: EP{rep['devices']} -> EP{rep['to']} "
          f"(attention TP{rep['tp']}), "
          f"{rep['batch_per_dp']} sequences per DP group of {rep['context']} tokens ({rep['throughput_before']:.0f} "
          f"tok/s, TPOT {rep['tpot_before_ms']:.1f} ms); {rep['experts']} experts x "
          f"{rep['moe_layers']} MoE layers, {rep['expert_mb']:.0f} MB per expert.")
    print(f"expert moves: {rep['expert_moves']} (minimum possible {rep['min_moves']}), "
          f"{rep['expert_bytes_moved_gb']:.1f} GB of experts + {rep['kv_bytes_moved_gb']:.1f} GB of KV cache over "
          f"{rep['p2p_bandwidth_gbs']:.0f} GB/s peer-to-peer links: {rep['transfer_s']:.2f} s. "
          f"Assumed: storage {args.storage_gbs:g} GB/s per device, runtime start {args.init_s:g} s. Predictions:")
    print(table(rep))
    shown = rep["moves"][:12]
    if shown:
        print("moves (expert: from -> to): " + ", ".join(f"{m['expert']}: {m['src']}->{m['dst']}" for m in shown)
              + (" ..." if len(rep["moves"]) > len(shown) else ""))
    return 0
