"""P/D-disaggregated serving planner: instance shapes, decode batch under the TPOT SLO, P/D ratio.

For every decode instance shape (devices N, attention TP t, DP-attention N/t, EP N) the largest
batch per DP group whose step meets the TPOT SLO and whose KV cache fits is found (TPOT grows with
the batch, so a bisection); for every prefill shape the batch of prompts per DP group that gives
the most *usable* throughput under the TTFT SLO: a request waits for the running batch, modelled
as an M/D/1 queue with the batch time t_p as service time, W = rho t_p / (2 (1 - rho)), so
TTFT = W + t_p + KV transfer <= SLO caps the prefill utilisation at rho_max = 2a / (t_p + 2a),
a = SLO - t_p - transfer. The P/D ratio then equalises the two stages' request rates:
n_p x (rho_max x prefill requests/s per instance) = n_d x decode requests/s per instance.
Plans are ranked by end-to-end output tokens/s per NPU (both pools counted). "NPU" is the package
as sold (a 910C = 2 devices); all figures are predictions of `inference.py`.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Optional

from . import inference as inf
from .shape import ModelShape, count_parameters, model_shape, resolve_config
from .strategy import Hardware, load_hardware


# --------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class Workload:
    """Request shape the deployment is sized for."""
    name: str
    prompt: int               # input tokens per request
    output: int               # output tokens per request (the first comes from prefill)
    prefix_hit: float = 0.0   # fraction of each prompt served from a prefix cache (not recomputed)

    @property
    def cached(self) -> int:
        return int(self.prompt * self.prefix_hit)


# CloudMatrix-Infer's decode-throughput table (arXiv:2506.12708): (prompt, output) of its three 50 ms rows
WORKLOADS = {
    "cm_infer_4k": Workload("cm_infer_4k", 4096, 256),
    "cm_infer_2k": Workload("cm_infer_2k", 2048, 256),
    "cm_infer_1k": Workload("cm_infer_1k", 1024, 1024),
}


@dataclass(frozen=True)
class SLO:
    ttft_s: float
    tpot_s: float


def parse_duration(text: str, what: str) -> float:
    """'50', '50ms', '2s', '2000ms' -> seconds (a bare number is milliseconds)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s)?\s*", text)
    if not m:
        raise ValueError(f"slo: {what}={text!r} is not a duration; write e.g. {what}=50ms or {what}=2s")
    v = float(m.group(1))
    return v if m.group(2) == "s" else v / 1e3


def parse_slo(text: str) -> SLO:
    """'ttft=2s,tpot=50ms' -> SLO."""
    parts = dict(p.split("=", 1) for p in text.split(",") if "=" in p)
    bad = [p for p in text.split(",") if "=" not in p and p.strip()]
    unknown = sorted(set(parts) - {"ttft", "tpot"})
    if bad or unknown or not {"ttft", "tpot"} <= set(parts):
        raise ValueError(f"slo: {text!r}; write --slo \"ttft=2s,tpot=50ms\" (both, in ms or s)")
    slo = SLO(parse_duration(parts["ttft"], "ttft"), parse_duration(parts["tpot"], "tpot"))
    if slo.ttft_s <= 0 or slo.tpot_s <= 0:
        raise ValueError(f"slo: {text!r}; both targets must be > 0")
    return slo


def parse_workload(text: Optional[str]) -> Workload:
    """A name in WORKLOADS or 'prompt=4096,output=256[,prefix=0.5]'."""
    if not text:
        return WORKLOADS["cm_infer_4k"]
    if text in WORKLOADS:
        return WORKLOADS[text]
    try:
        kv = dict(p.split("=", 1) for p in text.split(","))
        extra = set(kv) - {"prompt", "output", "prefix"}
        if extra:
            raise ValueError
        wl = Workload(text, int(kv["prompt"]), int(kv["output"]), float(kv.get("prefix", 0.0)))
    except (ValueError, KeyError):
        raise ValueError(f"workload: {text!r}; use one of {sorted(WORKLOADS)} or "
                         "\"prompt=4096,output=256[,prefix=0.5]\"") from None
    if wl.prompt < 1 or wl.output < 1 or not 0 <= wl.prefix_hit < 1:
        raise ValueError(f"workload: {text!r}; prompt and output >= 1, 0 <= prefix < 1")
    return wl


def parse_shape(text: Optional[str], what: str) -> Optional[tuple[int, int]]:
    """'320x1' -> (devices 320, attention TP 1)."""
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not m or int(m.group(1)) % int(m.group(2)):
        raise ValueError(f"{what}: {text!r}; write DEVICESxTP with TP dividing DEVICES, e.g. 320x1")
    return int(m.group(1)), int(m.group(2))


# --------------------------------------------------------------------------- options per stage

@dataclass
class DecodeOption:
    inst: inf.Instance
    batch: int                 # sequences per DP-attention group
    microbatches: int
    step_s: float
    tpot_s: float
    tokens_per_s_per_device: float
    requests_per_s: float      # per instance
    memory: inf.MemoryUse
    step: inf.StepCost


@dataclass
class PrefillOption:
    inst: inf.Instance
    seqs: int                  # prompts per DP-attention group per batch
    microbatches: int
    batch_s: float
    transfer_s: float
    rho_max: float             # utilisation at which TTFT meets the SLO
    capacity_rps: float        # requests/s per instance while busy
    tokens_per_s_per_device: float
    memory: inf.MemoryUse
    step: inf.StepCost

    @property
    def usable_rps(self) -> float:
        return self.rho_max * self.capacity_rps

    def ttft_s(self, rho: float) -> float:
        rho = min(rho, 0.999999)
        return rho * self.batch_s / (2 * (1 - rho)) + self.batch_s + self.transfer_s


def instance_sizes(hw: Hardware, max_devices: int) -> list[int]:
    """Device counts tried per instance: sub-node powers of two, then whole nodes."""
    dpn = hw.devices_per_node
    out = {d for d in (1, 2, 4) if d < dpn}
    out |= {dpn * m for m in (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48)}
    return sorted(d for d in out if d <= max_devices)


def tp_sizes(s: ModelShape, hw: Hardware, devices: int) -> list[int]:
    return [t for t in (1, 2, 4, 8, 16) if t <= hw.devices_per_node and devices % t == 0
            and s.num_heads % t == 0]


def decode_options(s, hw, prec, wl: Workload, slo: SLO, *, mtp_accept=0.0, shapes=None, batch=None,
                   microbatches=(1, 2)):
    """(options meeting the SLO, fastest single-sequence TPOT seen, whether anything fit in memory)."""
    mtp = mtp_accept > 0
    q = 2 if mtp else 1
    ctx_mem = wl.prompt + wl.output                 # the cache at the end of a request
    ctx_avg = wl.prompt + wl.output / 2             # what a step reads on average
    out, fastest, fit_any = [], (math.inf, None), False
    for inst in shapes:
        cap = inf.max_sequences(s, hw, inst, prec, ctx_mem, mtp=mtp, tokens_per_seq=q)
        if cap < 1:
            continue
        fit_any = True
        for m in microbatches:
            if m > 1 and cap < m:
                continue

            def step(b, m=m, inst=inst):
                return inf.decode_step(s, hw, inst, prec, b, ctx_avg, mtp_accept, m)
            lo = m
            t_lo = inf.tpot(step(lo), mtp_accept)
            if t_lo < fastest[0]:
                fastest = (t_lo, inst)
            if batch is not None:
                if batch > cap:
                    raise ValueError(f"decode-batch: {batch} sequences per DP group need more than "
                                     f"{hw.hbm_gb:g} GB on {inst.label()} (at most {cap}); lower it")
                best = batch if inf.tpot(step(batch), mtp_accept) <= slo.tpot_s else None
            else:
                if t_lo > slo.tpot_s:
                    continue
                best, hi = lo, cap
                while best < hi:                       # largest b with TPOT(b) <= SLO
                    mid = (best + hi + 1) // 2
                    if inf.tpot(step(mid), mtp_accept) <= slo.tpot_s:
                        best = mid
                    else:
                        hi = mid - 1
            if best is None:
                continue
            st = step(best)
            tok = best * (1 + mtp_accept) / st.seconds          # per DP group
            out.append(DecodeOption(
                inst=inst, batch=best, microbatches=m, step_s=st.seconds, tpot_s=inf.tpot(st, mtp_accept),
                tokens_per_s_per_device=tok / inst.tp,
                requests_per_s=inst.dp * tok / max(1, wl.output - 1),
                memory=inf.memory(s, hw, inst, prec, sequences=best, context=ctx_mem, mtp=mtp,
                                  tokens_in_flight=best * q), step=st))
    return out, fastest, fit_any


def prefill_options(s, hw, prec, wl: Workload, slo: SLO, *, mtp=False, shapes=None, max_seqs=64,
                    microbatches=(1, 2)):
    """(best option per shape, fastest one-prompt TTFT seen, whether anything fit in memory)."""
    out, fastest, fit_any = [], (math.inf, None), False
    for inst in shapes:
        best: Optional[PrefillOption] = None
        for m in microbatches:
            for k in range(m, max_seqs + 1):
                mem = inf.memory(s, hw, inst, prec, sequences=k, context=wl.prompt, mtp=mtp,
                                 tokens_in_flight=k * (wl.prompt - wl.cached))
                if not mem.fits:
                    break
                fit_any = True
                st = inf.prefill_batch(s, hw, inst, prec, k, wl.prompt, wl.cached, mtp, m)
                tx = inf.kv_transfer_seconds(s, hw, prec, wl.prompt, inst.tp, mtp=mtp)
                if st.seconds + tx < fastest[0]:
                    fastest = (st.seconds + tx, inst)
                a = slo.ttft_s - st.seconds - tx
                if a <= 0:
                    break                                # bigger batches only take longer
                rho = 2 * a / (st.seconds + 2 * a)
                cap = inst.dp * k / st.seconds
                opt = PrefillOption(inst=inst, seqs=k, microbatches=m, batch_s=st.seconds, transfer_s=tx,
                                    rho_max=rho, capacity_rps=cap,
                                    tokens_per_s_per_device=cap * wl.prompt / inst.devices, memory=mem, step=st)
                if best is None or opt.usable_rps / inst.devices > best.usable_rps / best.inst.devices:
                    best = opt
        if best is not None:
            out.append(best)
    return out, fastest, fit_any


# --------------------------------------------------------------------------- plans

@dataclass
class Plan:
    decode: DecodeOption
    prefill: PrefillOption
    n_decode: int
    n_prefill: int
    npus: float
    requests_per_s: float
    ttft_s: float
    prefill_utilisation: float
    devices_per_npu: int
    output_tokens: int

    @property
    def output_tokens_per_s_per_npu(self) -> float:
        return self.requests_per_s * self.output_tokens / self.npus

    def to_dict(self) -> dict:
        d, p, k = self.decode, self.prefill, self.devices_per_npu
        return dict(
            prefill_tokens_per_s_per_npu=p.tokens_per_s_per_device * k,
            decode_tokens_per_s_per_npu=d.tokens_per_s_per_device * k,
            ttft_ms=1e3 * self.ttft_s, tpot_ms=1e3 * d.tpot_s,
            e2e_output_tokens_per_s_per_npu=self.output_tokens_per_s_per_npu,
            requests_per_s=self.requests_per_s, npus=self.npus,
            pd_ratio=dict(prefill_instances=self.n_prefill, decode_instances=self.n_decode,
                          prefill_npus_per_decode_npu=(self.n_prefill * p.inst.devices)
                          / (self.n_decode * d.inst.devices)),
            decode_instance=dict(devices=d.inst.devices, npus=d.inst.devices / k, tp=d.inst.tp, dp=d.inst.dp,
                                 ep=d.inst.ep, batch_per_dp=d.batch, batch_per_npu=d.batch * d.inst.dp * k
                                 / d.inst.devices, microbatches=d.microbatches, step_ms=1e3 * d.step_s,
                                 bound=d.step.bound,
                                 memory_gb=_mem(d.memory), step_breakdown=inf.summary(d.step)),
            prefill_instance=dict(devices=p.inst.devices, npus=p.inst.devices / k, tp=p.inst.tp, dp=p.inst.dp,
                                  ep=p.inst.ep, prompts_per_dp=p.seqs, microbatches=p.microbatches,
                                  batch_ms=1e3 * p.batch_s, kv_transfer_ms=1e3 * p.transfer_s,
                                  utilisation=self.prefill_utilisation, max_utilisation=p.rho_max,
                                  bound=p.step.bound, memory_gb=_mem(p.memory), step_breakdown=inf.summary(p.step)))


def _mem(m: inf.MemoryUse) -> dict:
    return dict(weights=m.weights / 1e9, kv_cache=m.kv_cache / 1e9, activations=m.activations / 1e9,
                reserved=m.reserved / 1e9, total=m.total / 1e9, limit=m.limit / 1e9)


def combine(d: DecodeOption, p: PrefillOption, wl: Workload, hw: Hardware, *, npus: Optional[float] = None,
            load_rps: Optional[float] = None) -> Optional[Plan]:
    """Instance counts: equal stage request rates (prefill at its SLO-bound utilisation)."""
    k = hw.devices_per_npu
    ratio = d.requests_per_s / p.usable_rps                 # prefill instances per decode instance
    if load_rps is not None:
        n_d = max(1, math.ceil(load_rps / d.requests_per_s))
        n_p = max(1, math.ceil(load_rps / p.usable_rps))
        rps = load_rps
    elif npus is not None:
        devices = npus * k
        n_d = int(devices // (d.inst.devices + ratio * p.inst.devices))
        while n_d >= 1 and n_d * d.inst.devices + math.ceil(n_d * ratio) * p.inst.devices > devices:
            n_d -= 1
        if n_d < 1:
            return None
        n_p = math.ceil(n_d * ratio - 1e-9)
        rps = n_d * d.requests_per_s
    else:
        n_d, n_p = 1, max(1, math.ceil(ratio - 1e-9))
        rps = d.requests_per_s
    rho = rps / (n_p * p.capacity_rps)
    used = (n_d * d.inst.devices + n_p * p.inst.devices) / k
    return Plan(decode=d, prefill=p, n_decode=n_d, n_prefill=n_p, npus=used, requests_per_s=rps,
                ttft_s=p.ttft_s(rho), prefill_utilisation=rho, devices_per_npu=k, output_tokens=wl.output)


def pd_ratio(decode_rps_per_instance: float, prefill_rps_per_instance: float) -> float:
    """Prefill instances per decode instance that equalise the stages' request rates."""
    return decode_rps_per_instance / prefill_rps_per_instance


@dataclass
class PlanRequest:
    cfg: Any
    model_name: str
    hw: Hardware
    slo: SLO
    workload: Workload
    precision: inf.Precision
    mtp_accept: float = 0.0
    npus: Optional[float] = None
    load_rps: Optional[float] = None
    max_devices: Optional[int] = None
    decode_shape: Optional[tuple] = None
    prefill_shape: Optional[tuple] = None
    decode_batch: Optional[int] = None
    microbatches: tuple = (1, 2)
    top: int = 8


def plan(req: PlanRequest) -> list[Plan]:
    """All plans meeting the SLOs, best (E2E output tokens/s per NPU) first; one-line ValueError if none."""
    s, hw, prec, wl, slo = model_shape(req.cfg), req.hw, req.precision, req.workload, req.slo
    inf.check_precision(prec, hw)
    if not s.is_moe:
        raise ValueError(f"model: {req.model_name} is dense; serve-plan lays out MoE models (EP instances)")
    mtp = req.mtp_accept > 0
    if mtp:
        inf.decode_step(s, hw, inf.Instance(1), prec, 1, 1, req.mtp_accept)   # validates --mtp-accept
    limit = req.max_devices or max(hw.supernode_devices, 8 * hw.devices_per_node)
    if req.npus is not None:
        if req.npus <= 0:
            raise ValueError(f"npus: {req.npus}; give a positive NPU count")
        limit = min(limit, int(req.npus * hw.devices_per_npu))
    sizes = instance_sizes(hw, limit)

    def shapes(pinned):
        if pinned:
            return [inf.Instance(*pinned)]
        return [inf.Instance(n, t) for n in sizes for t in tp_sizes(s, hw, n)]
    decodes, fastest_d, fit_d = decode_options(s, hw, prec, wl, slo, mtp_accept=req.mtp_accept,
                                               shapes=shapes(req.decode_shape), batch=req.decode_batch,
                                               microbatches=req.microbatches)
    w_gb = sum(inf.weight_bytes(s, inf.Instance(1), prec, mtp).values()) / 1e9
    if not fit_d:
        biggest = req.decode_shape[0] if req.decode_shape else (sizes[-1] if sizes else 0)
        raise ValueError(f"model: {req.model_name} ({w_gb:.0f} GB of {prec.weights} weights + KV cache of one "
                         f"{wl.prompt + wl.output}-token request) does not fit on {biggest} x {hw.hbm_gb:g} GB "
                         f"devices of {hw.name}; use --dtype int8, allow larger instances (--max-devices) "
                         "or more NPUs")
    if not decodes:
        t, inst = fastest_d
        hint = "" if mtp or not s.num_mtp_layers else " or enable MTP (--mtp-accept 0.7)"
        raise ValueError(f"slo: tpot={1e3 * req.slo.tpot_s:g}ms unreachable for {req.model_name} on {hw.name}: "
                         f"the fastest decode ({inst.label()}, batch {req.decode_batch or 1}) takes "
                         f"{1e3 * t:.1f} ms per token; raise tpot to >= {math.ceil(1e3 * t)}ms{hint}")
    prefills, fastest_p, fit_p = prefill_options(s, hw, prec, wl, slo, mtp=mtp, shapes=shapes(req.prefill_shape),
                                                 microbatches=req.microbatches)
    if not fit_p:
        raise ValueError(f"model: {req.model_name} does not fit one {wl.prompt}-token prefill on "
                         f"{hw.hbm_gb:g} GB devices of {hw.name}; use --dtype int8 or larger instances")
    if not prefills:
        t, inst = fastest_p
        raise ValueError(f"slo: ttft={1e3 * req.slo.ttft_s:g}ms unreachable for {req.model_name} on {hw.name}: "
                         f"one {wl.prompt}-token prefill + KV transfer takes {1e3 * t:.0f} ms at best "
                         f"({inst.label()}); raise ttft to >= {math.ceil(1e3 * t * 1.5)}ms or shorten the prompt")
    best_p = max(prefills, key=lambda p: p.usable_rps / p.inst.devices)
    plans = []
    for d in decodes:
        pl = combine(d, best_p, wl, hw, npus=req.npus, load_rps=req.load_rps)
        if pl is not None:
            plans.append(pl)
    if not plans:
        need = (min(d.inst.devices for d in decodes) + best_p.inst.devices) / hw.devices_per_npu
        raise ValueError(f"npus: {req.npus:g} NPUs cannot hold one decode and one prefill instance; "
                         f"use --npus >= {math.ceil(need)}")
    # a fixed cluster is ranked by what it serves in total; otherwise by efficiency (per NPU used)
    total = req.npus is not None
    plans.sort(key=lambda p: (-round(p.requests_per_s if total else p.output_tokens_per_s_per_npu, 6),
                              p.decode.tpot_s, p.decode.inst.devices))
    return plans


# --------------------------------------------------------------------------- output

def report(req: PlanRequest, plans: list[Plan]) -> dict:
    s = model_shape(req.cfg)
    total, active = count_parameters(req.cfg)
    return dict(
        model=req.model_name, hardware=req.hw.name, devices_per_npu=req.hw.devices_per_npu,
        precision=asdict(req.precision), slo=dict(ttft_ms=1e3 * req.slo.ttft_s, tpot_ms=1e3 * req.slo.tpot_s),
        workload=asdict(req.workload), mtp_accept=req.mtp_accept,
        sizing=("npus" if req.npus is not None else "load" if req.load_rps is not None else "one decode instance"),
        params_b=dict(total=total / 1e9, active=active / 1e9),
        kv_cache_mb_per_request=inf.kv_bytes_per_request(s, req.precision, req.workload.prompt + req.workload.output,
                                                         req.mtp_accept > 0) / 1e6,
        note="model predictions (parallel_strategies/inference.py), not measurements",
        plans=[p.to_dict() for p in plans[:req.top]])


def table(rep: dict) -> str:
    head = ("| # | decode instance | batch/NPU | TPOT ms | decode tok/s/NPU | prefill instance | prompts/DP "
            "| prefill tok/s/NPU | TTFT ms | P:D inst | NPUs | E2E out tok/s/NPU | mem GB D / P |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for i, p in enumerate(rep["plans"], 1):
        d, f, r = p["decode_instance"], p["prefill_instance"], p["pd_ratio"]
        mb = lambda x: " mb2" if x["microbatches"] == 2 else ""   # noqa: E731
        lines.append(
            f"| {i} | {d['devices']} dev TP{d['tp']} DP{d['dp']} EP{d['ep']}{mb(d)} | {d['batch_per_npu']:.0f} "
            f"| {p['tpot_ms']:.1f} | {p['decode_tokens_per_s_per_npu']:.0f} | {f['devices']} dev TP{f['tp']} "
            f"DP{f['dp']} EP{f['ep']}{mb(f)} | {f['prompts_per_dp']} | {p['prefill_tokens_per_s_per_npu']:.0f} "
            f"| {p['ttft_ms']:.0f} | {r['prefill_instances']}:{r['decode_instances']} | {p['npus']:g} "
            f"| {p['e2e_output_tokens_per_s_per_npu']:.0f} | {d['memory_gb']['total']:.1f} / "
            f"{f['memory_gb']['total']:.1f} |")
    return "\n".join(lines)


def model_from_args(args) -> tuple[Any, str]:
    """(config, display name) from a CLI's --model/--preset or --config-json (exactly one)."""
    if bool(args.model) == bool(args.config_json):
        raise ValueError("model: give exactly one of --model ARCH or --config-json FILE")
    if args.config_json:
        cfg = resolve_config({"config_json": args.config_json})
        name = (cfg.get("architectures") or [cfg.get("model_type", "config")])[0] if isinstance(cfg, dict) \
            else args.config_json
        return cfg, f"{name} ({args.config_json})"
    return resolve_config({"arch": args.model, "preset": args.preset}), f"{args.model}/{args.preset}"


def add_parser(sub) -> None:
    p = sub.add_parser("serve-plan", help="P/D-disaggregated serving plan under TTFT/TPOT SLOs")
    p.add_argument("--model", help="registry arch, e.g. pangu_ultra_moe")
    p.add_argument("--preset", default="full")
    p.add_argument("--config-json",
                   help="a released HF config.json, e.g. parallel_strategies/models/deepseek_r1_config.json")
    p.add_argument("--hardware", required=True, help="profile in parallel_strategies/hardware/")
    p.add_argument("--slo", required=True, help='"ttft=2s,tpot=50ms"')
    p.add_argument("--workload", help=f"one of {sorted(WORKLOADS)} or \"prompt=4096,output=256[,prefix=0.5]\"")
    p.add_argument("--dtype", default="bf16", help="weights / matmul: bf16 | fp16 | int8 (W8A8)")
    p.add_argument("--kv-dtype", default=None, help="KV cache dtype (default: 16-bit, fp16 where bf16 is unsupported)")
    p.add_argument("--mtp-accept", type=float, default=0.0,
                   help="MTP draft acceptance rate (0 = no speculative decoding)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--npus", type=float, help="size for a cluster of this many NPUs (packages)")
    g.add_argument("--load", type=float, help="size for this many requests/s")
    p.add_argument("--max-devices", type=int, help="largest instance in devices (default: the scale-up domain)")
    p.add_argument("--decode-shape", help="pin the decode instance, DEVICESxTP (e.g. 320x1)")
    p.add_argument("--prefill-shape", help="pin the prefill instance, DEVICESxTP")
    p.add_argument("--decode-batch", type=int, help="pin the sequences per DP group of the decode instance")
    p.add_argument("--microbatches", choices=("1", "2", "both"), default="both")
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    cfg, name = model_from_args(args)
    hw = load_hardware(args.hardware)
    kv = args.kv_dtype or ("bf16" if "bf16" in tuple(hw.matmul_dtypes) else "fp16")
    req = PlanRequest(cfg=cfg, model_name=name, hw=hw, slo=parse_slo(args.slo), workload=parse_workload(args.workload),
                      precision=inf.Precision(args.dtype, kv), mtp_accept=args.mtp_accept, npus=args.npus,
                      load_rps=args.load, max_devices=args.max_devices,
                      decode_shape=parse_shape(args.decode_shape, "decode-shape"),
                      prefill_shape=parse_shape(args.prefill_shape, "prefill-shape"),
                      decode_batch=args.decode_batch,
                      microbatches={"1": (1,), "2": (2,), "both": (1, 2)}[args.microbatches], top=args.top)
    if args.decode_batch is not None and args.decode_batch < 1:
        raise ValueError(f"decode-batch: {args.decode_batch}; give >= 1")
    rep = report(req, plan(req))
    if args.json:
        print(json.dumps(rep, indent=1))
        return 0
    wl, slo = req.workload, req.slo
    print(f"{name} on {hw.name} ({hw.devices_per_npu} device(s) per NPU), {req.precision.weights} weights, "
          f"workload {wl.prompt} in / {wl.output} out (prefix hit {wl.prefix_hit:g}), SLO TTFT "
          f"{1e3 * slo.ttft_s:g} ms / TPOT {1e3 * slo.tpot_s:g} ms, sized for {rep['sizing']}; "
          f"KV cache {rep['kv_cache_mb_per_request']:.0f} MB per request. Predictions, best first:")
    print(table(rep))
    return 0
