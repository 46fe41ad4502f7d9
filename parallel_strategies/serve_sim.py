"""Discrete-event simulation of P/D-disaggregated serving on a request trace.

Every system serves the same trace with the same instances (service times come from the cost
model in `inference.py`). The baseline is the first commercial disaggregated deployment that
P/D-Serve (arXiv:2408.08147) starts from, and P/D-Serve's mechanisms are added one at a time:

* **mixed pool, scheduler on reports** (baseline): one pool of prefill and one of decode instances
  for all scenarios, a fixed P/D ratio, and a global scheduler that sends each request to the
  prefill instance with the shortest *reported* queue: it counts its own dispatches but learns of
  completions only every `report_interval` s, and a 6K-token prompt counts like a 1K one (the
  paper's "inaccurate estimation on workload");
* **on-demand forwarding**: an instance accepts a request only when it is idle (it knows its own
  state exactly); a rejected request goes to the next instance, and if all reject it waits in the
  central queue until one becomes idle;
* **contiguous KV transfer** (below);
* **P/D groups per scenario**: one P/D group per scenario, sized by the scenario's demand; its
  prefill instances only see that scenario's prompt prefixes, so their prefix cache (LRU, HBM-sized)
  holds more of them;
* **dynamic P/D ratio**: every `adjust_interval` s the most loaded (group, role) takes instances
  from the least loaded one (each drains, then switches role / group after `switch_s`, and starts
  with an empty prefix cache).

KV cache transfer from prefill to decode is either **block-fixed** (one RDMA write per
`block_tokens`-token block per layer, each paying the profile's per-write latency) or
**contiguous** (one buffer per request, P/D-Serve's block-free transfer); a request's KV leaves
through the NICs of the DP group that prefilled it, one request after another per group. A
request whose prefill has not started `timeout_s` after arrival times out (counted, dropped).
TTFT = prefill completion - arrival (prefill emits the first token).
Decode is continuous batching up to the batch the TPOT SLO and HBM allow.

The trace: Poisson, bursty (two-state Markov-modulated Poisson) or tidal (sinusoidal rate, a
different phase per scenario so the scenario mix shifts) arrivals of a scenario mix with its own
prompt / shared-prefix / output lengths. Everything is deterministic under `seed`.
"""
from __future__ import annotations

import heapq
import itertools
import json
import math
import os
import random
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from typing import Optional

from . import inference as inf
from .serve_plan import model_from_args, parse_shape, parse_slo
from .shape import ModelShape, model_shape
from .strategy import Hardware, load_hardware


# --------------------------------------------------------------------------- trace

@dataclass(frozen=True)
class Scenario:
    """One service scenario: its share of arrivals and its request shape (mean lengths)."""
    name: str
    share: float
    prompt: int      # mean prompt tokens, prefix included
    prefix: int      # tokens of a shared prefix (system prompt / template), cacheable
    output: int      # mean output tokens
    variants: int = 1   # distinct prefixes of the scenario (apps / templates), drawn uniformly


# Illustrative mix (not from a paper): chat apps on a platform, retrieval-augmented QA, agents with long templates
DEFAULT_SCENARIOS = (
    Scenario("assistant", 0.5, 1500, 1000, 300, variants=96),
    Scenario("rag", 0.3, 6000, 1500, 150, variants=24),
    Scenario("agent", 0.2, 3000, 2500, 600, variants=12),
)


@dataclass
class Request:
    id: int
    arrival: float
    scenario: int
    prompt: int
    prefix: int
    output: int
    variant: int = 0
    # filled by the simulation
    prefill_start: float = math.nan
    first_token: float = math.nan
    transfer_s: float = math.nan
    done: float = math.nan
    timed_out: bool = False
    remaining: int = 0
    cached: int = 0


def make_trace(arrival: str, rate: float, duration: float, scenarios=DEFAULT_SCENARIOS, seed: int = 0,
               burst: float = 0.8, burst_period: float = 60.0, tide: float = 0.4, mix_shift: float = 0.6,
               tide_period: Optional[float] = None) -> list[Request]:
    """Arrivals over [0, duration) at mean ~`rate` requests/s, sorted by time. Tidal: the total rate
    swings by +-`tide` and each scenario's share by +-`mix_shift` with its own phase."""
    if arrival not in ("poisson", "bursty", "tidal"):
        raise ValueError(f"arrival: {arrival!r}; use poisson, bursty or tidal")
    if rate <= 0 or duration <= 0:
        raise ValueError(f"trace: rate {rate} and duration {duration} must be > 0")
    total = sum(sc.share for sc in scenarios)
    rng = random.Random(seed)
    times: list[tuple[float, int]] = []
    if arrival == "tidal":          # thinning of a sinusoidal rate per scenario, phases spread over the mix
        period = tide_period or duration / 2
        for i, sc in enumerate(scenarios):
            lam = rate * sc.share / total
            phase = 2 * math.pi * i / len(scenarios)
            t, peak = 0.0, lam * (1 + tide) * (1 + mix_shift)
            while True:
                t += rng.expovariate(peak)
                if t >= duration:
                    break
                x = 2 * math.pi * t / period
                if rng.random() * peak <= lam * (1 + tide * math.sin(x)) * (1 + mix_shift * math.sin(x + phase)):
                    times.append((t, i))
    else:
        t, high = 0.0, True
        switch = rng.expovariate(2 / burst_period) if arrival == "bursty" else math.inf
        weights = [sc.share for sc in scenarios]
        while True:
            lam = rate * ((1 + burst) if high else (1 - burst)) if arrival == "bursty" else rate
            gap = rng.expovariate(lam)
            if t + gap >= switch:                     # memoryless: restart the gap in the new state
                t, high = switch, not high
                switch = t + rng.expovariate(2 / burst_period)
                continue
            t += gap
            if t >= duration:
                break
            times.append((t, rng.choices(range(len(scenarios)), weights)[0]))
    times.sort()
    out = []
    for k, (t, i) in enumerate(times):
        sc = scenarios[i]
        body = max(1, round((sc.prompt - sc.prefix) * rng.uniform(0.5, 1.5)))
        out.append(Request(k, t, i, sc.prefix + body, sc.prefix, max(2, round(sc.output * rng.uniform(0.5, 1.5))),
                           rng.randrange(sc.variants)))
    return out


# --------------------------------------------------------------------------- engines

@dataclass
class SimConfig:
    """Deployment and policy knobs of one simulated system."""
    n_prefill: int                  # prefill instances (initially)
    n_decode: int                   # decode instances (initially)
    prefill_inst: inf.Instance
    decode_inst: inf.Instance
    precision: inf.Precision
    ttft_slo_s: float
    tpot_slo_s: float
    timeout_s: float
    max_prefill_tokens: int = 8192      # new tokens per prefill batch per DP group
    block_tokens: int = 128             # KV block size of the block-fixed transfer
    prefix_cache_tokens: Optional[int] = None   # prefix-cache capacity per DP group (LRU); None = the HBM
                                                # left after weights, reserve and a full batch
    report_interval: float = 1.0        # mixed pool: how often instances report their queue
    adjust_interval: float = 5.0        # P/D-Serve: ratio adjustment period
    max_moves: int = 2                  # P/D-Serve: instances moved per adjustment at most
    switch_s: float = 5.0               # P/D-Serve: time to switch a drained instance's role / group
    window_s: float = 10.0              # time series resolution


class _Costs:
    """Cached cost-model calls."""

    def __init__(self, s: ModelShape, hw: Hardware, cfg: SimConfig, scenarios):
        self.s, self.hw, self.cfg = s, hw, cfg
        self._decode: dict = {}
        tot = sum(sc.share for sc in scenarios)
        # mean context of a decoding request of the mix (prompt + half its output): sizes the batch
        self.ctx = sum(sc.share / tot * (sc.prompt + sc.output / 2) for sc in scenarios)
        self.decode_cap = self._decode_capacity(s, hw, cfg)     # concurrent sequences per decode instance
        probe = Request(-1, 0, 0, 4096, 0, 1)
        self.prefill_s_per_token = self.prefill([probe] * cfg.prefill_inst.dp) / (4096 * cfg.prefill_inst.dp)
        self.prefix_cache_tokens = cfg.prefix_cache_tokens if cfg.prefix_cache_tokens is not None else \
            self._free_cache_tokens()

    def _free_cache_tokens(self) -> int:
        """Tokens of prefix KV one prefill DP group can keep: HBM minus weights, reserve and a full batch."""
        pi, cfg = self.cfg.prefill_inst, self.cfg
        full = inf.memory(self.s, self.hw, pi, cfg.precision, sequences=1, context=cfg.max_prefill_tokens,
                          tokens_in_flight=cfg.max_prefill_tokens)
        per_token = full.kv_cache / cfg.max_prefill_tokens
        free = full.limit - full.total
        if free <= 0:
            raise ValueError(f"prefill: a {cfg.max_prefill_tokens}-token batch per DP group does not fit "
                             f"{pi.label()} on {self.hw.name}; use larger instances (--prefill-shape DEVICESxTP) "
                             "or --dtype int8")
        return int(free // per_token)

    def _decode_capacity(self, s, hw, cfg) -> int:
        """Sequences per decode instance: KV of the mix's mean request (x1.5 headroom) must fit, and the
        step at that batch must meet the TPOT SLO."""
        di = cfg.decode_inst
        cap = inf.max_sequences(s, hw, di, cfg.precision, 1.5 * self.ctx)
        if cap < 1:
            raise ValueError(f"decode: the model does not fit {di.label()} on {hw.name}; use larger instances "
                             "(--decode-shape DEVICESxTP) or --dtype int8")
        lo, hi = 0, cap
        while lo < hi:                               # the step grows with the batch: bisect
            mid = (lo + hi + 1) // 2
            if self.step(mid * di.dp, self.ctx) <= cfg.tpot_slo_s:
                lo = mid
            else:
                hi = mid - 1
        if lo == 0:
            raise ValueError(f"slo: tpot={1e3 * cfg.tpot_slo_s:g}ms unreachable on {di.label()} of {hw.name} "
                             f"(one sequence per DP group takes {1e3 * self.step(di.dp, self.ctx):.1f} ms per "
                             f"token); raise tpot to >= {math.ceil(1e3 * self.step(di.dp, self.ctx))}ms or use "
                             "larger instances (--decode-shape)")
        return lo * di.dp

    def step(self, active: int, ctx: float) -> float:
        di = self.cfg.decode_inst
        b = math.ceil(active / di.dp)
        key = (b, int(ctx // 256))
        if key not in self._decode:
            self._decode[key] = inf.decode_step(self.s, self.hw, di, self.cfg.precision, b,
                                                256 * (key[1] + 0.5)).seconds
        return self._decode[key]

    def prefill(self, reqs: list[Request]) -> float:
        new = sum(r.prompt - r.cached for r in reqs)
        att = sum(inf.prefill_attended(r.prompt - r.cached, r.cached) for r in reqs)
        return inf.prefill_packed(self.s, self.hw, self.cfg.prefill_inst, self.cfg.precision, new_tokens=new,
                                  attended=att, cached_tokens=sum(r.cached for r in reqs), seqs=len(reqs)).seconds

    def transfer(self, r: Request, contiguous: bool) -> float:
        return inf.kv_transfer_seconds(self.s, self.hw, self.cfg.precision, r.prompt, self.cfg.prefill_inst.tp,
                                       block_tokens=0 if contiguous else self.cfg.block_tokens)


@dataclass
class _Prefill:
    idx: int
    group: int
    queue: deque = field(default_factory=deque)
    busy_until: float = 0.0
    busy: bool = False
    nic_free: list = field(default_factory=list)   # per DP group (its TP devices send their KV share)
    cache: OrderedDict = field(default_factory=OrderedDict)   # (scenario, variant) -> prefix tokens, LRU
    cache_tokens: int = 0
    busy_time: float = 0.0
    draining: bool = False


@dataclass
class _Decode:
    """Continuous batching: `running` is a heap of (step at which the request finishes, id, request)."""
    idx: int
    group: int
    running: list = field(default_factory=list)
    waiting: deque = field(default_factory=deque)
    steps: int = 0
    ctx_sum: float = 0.0          # sum of the running requests' current context lengths
    stepping: bool = False
    draining: bool = False

    @property
    def load(self) -> int:
        return len(self.running) + len(self.waiting)


@dataclass(frozen=True)
class System:
    """Which of P/D-Serve's mechanisms a simulated deployment uses."""
    name: str
    per_scenario: bool      # one P/D group per scenario (else one mixed pool)
    on_demand: bool         # idle instances accept, rejected requests wait centrally (else JSQ on reports)
    dynamic_ratio: bool     # periodic instance moves between (group, role)
    contiguous: bool        # contiguous KV transfer (else block-fixed)


# the baseline, then P/D-Serve's mechanisms added one at a time
SYSTEMS = (
    System("mixed pool (baseline)", False, False, False, False),
    System("+ on-demand forwarding", False, True, False, False),
    System("+ contiguous KV transfer", False, True, False, True),
    System("P/D-Serve groups, static ratio", True, True, False, True),
    System("P/D-Serve groups, dynamic ratio", True, True, True, True),
)


class Simulation:
    """One system on one trace."""

    def __init__(self, s: ModelShape, hw: Hardware, cfg: SimConfig, scenarios, system: System):
        self.s, self.hw, self.cfg, self.scenarios = s, hw, cfg, scenarios
        self.system, self.contiguous = system, system.contiguous
        self.costs = _Costs(s, hw, cfg, scenarios)
        self.prefill_busy = 0.0
        self.prompt_tokens = self.cached_tokens = 0
        self.queued_while_idle = 0          # requests sent behind a busy instance while another was idle
        self.events: list = []
        self.seq = itertools.count()
        self.now = 0.0
        self.done: list[Request] = []
        self.timeouts: list[Request] = []
        self.moves: list[tuple[float, str]] = []
        groups = len(scenarios) if system.per_scenario else 1
        self.group_queue = [deque() for _ in range(groups)]
        pg, dg = self._initial_groups(groups)
        self.prefills = [_Prefill(i, g) for i, g in enumerate(pg)]
        self.decodes = [_Decode(i, g) for i, g in enumerate(dg)]
        self.reported = [0] * len(self.prefills)
        self.roles_over_time: list[tuple[float, int, int]] = []

    # ---- allocation
    def _initial_groups(self, groups: int) -> tuple[list[int], list[int]]:
        cfg = self.cfg
        if groups == 1:
            return [0] * cfg.n_prefill, [0] * cfg.n_decode
        # demand per scenario: prefill instance-seconds per second and decode slots in use
        c = self.costs
        p_need, d_need = [], []
        for sc in self.scenarios:
            r = Request(-1, 0, 0, sc.prompt, sc.prefix, sc.output)
            r.cached = sc.prefix if sc.prefix < sc.prompt else 0
            p_need.append(sc.share * c.prefill([r] * cfg.prefill_inst.dp) / cfg.prefill_inst.dp)
            d_need.append(sc.share * sc.output)
        return _split(cfg.n_prefill, p_need), _split(cfg.n_decode, d_need)

    # ---- event loop
    def push(self, t: float, kind: str, *payload):
        heapq.heappush(self.events, (t, next(self.seq), kind, payload))

    def run(self, trace: list[Request], until: Optional[float] = None) -> dict:
        for r in trace:
            self.push(r.arrival, "arrival", r)
        end = until if until is not None else (trace[-1].arrival if trace else 0.0)
        if not self.system.on_demand:
            self.push(0.0, "report")
        if self.system.dynamic_ratio:
            self.push(self.cfg.adjust_interval, "adjust")
        self._record_roles()
        self.end = end
        while self.events:
            t, _, kind, payload = heapq.heappop(self.events)
            if t > end and kind in ("report", "adjust"):
                continue
            self.now = t
            getattr(self, "_on_" + kind)(*payload)
        return self.summary(trace)

    # ---- prefill side
    def _on_report(self):
        self.reported = [len(p.queue) + (1 if p.busy else 0) for p in self.prefills]
        self.push(self.now + self.cfg.report_interval, "report")

    def _on_arrival(self, r: Request):
        if not self.system.on_demand:
            # join the shortest reported queue (in requests); the scheduler counts its own dispatches but
            # learns of completions only at the next report, and a 6K-token prompt counts like a 1K one
            i = min(range(len(self.prefills)), key=lambda k: self.reported[k])
            self.reported[i] += 1
            if self.prefills[i].busy and any(not p.busy for p in self.prefills):
                self.queued_while_idle += 1
            self.prefills[i].queue.append(r)
            self._try_start(self.prefills[i])
        else:
            g = self._group(r)
            self.group_queue[g].append(r)
            for p in self._prefills_of(g):               # on-demand forwarding: only an idle instance accepts
                if not p.busy and not p.draining:
                    self._try_start(p)
                    break

    def _prefills_of(self, g: int):
        return [p for p in self.prefills if p.group == g]

    def _pending(self, p: _Prefill) -> deque:
        return self.group_queue[p.group] if self.system.on_demand else p.queue

    def _group(self, r: Request) -> int:
        return r.scenario if self.system.per_scenario else 0

    def _try_start(self, p: _Prefill):
        if p.busy or p.draining:
            return
        q = self._pending(p)
        batch, tokens = [], 0
        limit = self.cfg.max_prefill_tokens * self.cfg.prefill_inst.dp
        while q:
            r = q[0]
            if self.now - r.arrival > self.cfg.timeout_s:
                q.popleft()
                r.timed_out = True
                self.timeouts.append(r)
                continue
            r.cached = r.prefix if ((r.scenario, r.variant) in p.cache and r.prefix < r.prompt) else 0
            if batch and tokens + r.prompt - r.cached > limit:
                break
            q.popleft()
            batch.append(r)
            tokens += r.prompt - r.cached
        if not batch:
            return
        for r in batch:
            r.prefill_start = self.now
            self.prompt_tokens += r.prompt
            self.cached_tokens += r.cached
            key = (r.scenario, r.variant)
            if key not in p.cache:
                p.cache_tokens += r.prefix
            p.cache[key] = r.prefix
            p.cache.move_to_end(key)
            while p.cache_tokens > self.costs.prefix_cache_tokens:
                p.cache_tokens -= p.cache.popitem(last=False)[1]
        dt = self.costs.prefill(batch)
        p.busy, p.busy_until = True, self.now + dt
        self.prefill_busy += dt
        self.push(self.now + dt, "prefill_done", p, batch)

    def _on_prefill_done(self, p: _Prefill, batch: list[Request]):
        p.busy = False
        if not p.nic_free:
            p.nic_free = [0.0] * self.cfg.prefill_inst.dp
        for r in batch:
            r.first_token = self.now
            dt = self.costs.transfer(r, self.contiguous)
            k = min(range(len(p.nic_free)), key=lambda k: p.nic_free[k])   # the DP group that held it
            p.nic_free[k] = max(self.now, p.nic_free[k]) + dt
            r.transfer_s = p.nic_free[k] - self.now
            self.push(p.nic_free[k], "transfer_done", r)
        if p.draining:
            self._finish_drain_prefill(p)
        else:
            self._try_start(p)

    # ---- decode side
    def _on_transfer_done(self, r: Request):
        g = self._group(r)
        ds = [d for d in self.decodes if d.group == g and not d.draining] or \
            [d for d in self.decodes if d.group == g]
        d = min(ds, key=lambda d: d.load)
        d.waiting.append(r)
        self._admit(d)

    def _admit(self, d: _Decode):
        while d.waiting and len(d.running) < self.costs.decode_cap and not d.draining:
            r = d.waiting.popleft()
            heapq.heappush(d.running, (d.steps + r.output - 1, r.id, r))   # prefill made token 1
            d.ctx_sum += r.prompt + 1
        if d.running and not d.stepping:
            d.stepping = True
            self._step(d)

    def _step(self, d: _Decode):
        dt = self.costs.step(len(d.running), d.ctx_sum / len(d.running))
        self.push(self.now + dt, "decode_step", d)

    def _on_decode_step(self, d: _Decode):
        d.steps += 1
        d.ctx_sum += len(d.running)
        while d.running and d.running[0][0] <= d.steps:
            _, _, r = heapq.heappop(d.running)
            r.done = self.now
            d.ctx_sum -= r.prompt + r.output
            self.done.append(r)
        d.stepping = False
        if d.draining:
            if d.running:
                d.stepping = True
                self._step(d)
            elif not d.waiting:
                self._finish_drain_decode(d)
            return
        self._admit(d)

    # ---- P/D-Serve ratio adjustment
    def _pressures(self):
        """(pressure, kind, group) for every (group, role): demand over capacity in the last interval."""
        out = []
        groups = len(self.group_queue)
        for g in range(groups):
            ps = [p for p in self.prefills if p.group == g and not p.draining]
            ds = [d for d in self.decodes if d.group == g and not d.draining]
            # prefill: queued work (seconds of prefill) per instance relative to the TTFT budget
            queued = sum(r.prompt - (r.prefix if r.prefix < r.prompt else 0) for r in self.group_queue[g])
            busy = sum(1 for p in ps if p.busy)
            pp = (busy + queued * self.costs.prefill_s_per_token / self.cfg.ttft_slo_s) / max(1, len(ps))
            slots = max(1, len(ds)) * self.costs.decode_cap
            dp = sum(d.load for d in ds) / slots
            out.append((pp, "prefill", g, len(ps)))
            out.append((dp, "decode", g, len(ds)))
        return out

    def _on_adjust(self):
        """Move instances from the least to the most loaded (group, role) while one is over 1 and the
        other under 0.6 (at most `max_moves` per round; every move drains first)."""
        for _ in range(self.cfg.max_moves):
            pr = self._pressures()
            hot = max(pr, key=lambda x: x[0])
            cold = [x for x in pr if x[3] > 1 and (x[1], x[2]) != (hot[1], hot[2])]
            if hot[0] <= 1.0 or not cold:
                break
            c = min(cold, key=lambda x: x[0])
            if c[0] >= 0.6:
                break
            self._move(c[1], c[2], hot[1], hot[2])
        self.push(self.now + self.cfg.adjust_interval, "adjust")

    def _move(self, role, group, to_role, to_group):
        names = self.scenarios[group].name, self.scenarios[to_group].name
        self.moves.append((self.now, f"{role}[{names[0]}] -> {to_role}[{names[1]}]"))
        if role == "prefill":
            p = min((p for p in self.prefills if p.group == group and not p.draining), key=lambda p: p.busy)
            p.draining, p.target = True, (to_role, to_group)
            if not p.busy:
                self._finish_drain_prefill(p)
        else:
            d = min((d for d in self.decodes if d.group == group and not d.draining), key=lambda d: d.load)
            d.draining, d.target = True, (to_role, to_group)
            while d.waiting:                    # hand its waiting requests to the group's other instances
                self.push(self.now, "transfer_done", d.waiting.popleft())
            if not d.running:
                self._finish_drain_decode(d)

    def _finish_drain_prefill(self, p: _Prefill):
        self.prefills.remove(p)
        self.push(self.now + self.cfg.switch_s, "switched", *p.target)

    def _finish_drain_decode(self, d: _Decode):
        self.decodes.remove(d)
        self.push(self.now + self.cfg.switch_s, "switched", *d.target)

    def _on_switched(self, role: str, group: int):
        if role == "prefill":
            p = _Prefill(max([x.idx for x in self.prefills] + [len(self.prefills)]) + 1, group)
            self.prefills.append(p)
            self.reported.append(0)
            self._try_start(p)
        else:
            d = _Decode(max([x.idx for x in self.decodes] + [len(self.decodes)]) + 1, group)
            self.decodes.append(d)
        self._record_roles()

    def _record_roles(self):
        self.roles_over_time.append((self.now, len(self.prefills), len(self.decodes)))

    # ---- results
    def summary(self, trace: list[Request]) -> dict:
        n = len(trace)
        ttfts = sorted(r.first_token - r.arrival for r in trace if not math.isnan(r.first_token))
        met = sum(1 for r in trace
                  if not math.isnan(r.first_token) and r.first_token - r.arrival <= self.cfg.ttft_slo_s)
        out_tokens = sum(r.output for r in self.done)
        span = max([r.done for r in self.done] + [self.end]) if self.done else self.end
        tpots = [(r.done - r.first_token) / (r.output - 1) for r in self.done if r.output > 1]
        xfer = [r.transfer_s for r in trace if not math.isnan(r.transfer_s)]
        return dict(
            system=self.system.name, kv_transfer="contiguous" if self.contiguous else "block-fixed",
            requests=n, completed=len(self.done), timeouts=len(self.timeouts),
            e2e_output_tokens_per_s=out_tokens / span if span else 0.0,
            ttft_slo_attainment=met / n if n else 0.0,
            ttft_p50_ms=1e3 * _pct(ttfts, 0.5), ttft_p99_ms=1e3 * _pct(ttfts, 0.99),
            tpot_mean_ms=1e3 * sum(tpots) / len(tpots) if tpots else math.nan,
            kv_transfer_mean_ms=1e3 * sum(xfer) / len(xfer) if xfer else math.nan,
            ratio_moves=len(self.moves), queued_while_idle=self.queued_while_idle,
            prefix_hit_rate=self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0,
            prefill_busy_share=self.prefill_busy / (self.cfg.n_prefill * span) if span else 0.0,
        )

    def series(self, trace: list[Request]) -> dict:
        """Per window: arrivals/s, output tokens/s completed, TTFT p90 (ms), timeouts."""
        w = self.cfg.window_s
        nwin = max(1, math.ceil(max([self.end] + [r.done for r in self.done]) / w))
        arr, tok, tout = [0.0] * nwin, [0.0] * nwin, [0] * nwin
        ttft = [[] for _ in range(nwin)]
        for r in trace:
            k = min(nwin - 1, int(r.arrival // w))
            arr[k] += 1 / w
            if r.timed_out:
                tout[k] += 1
            elif not math.isnan(r.first_token):
                ttft[k].append(r.first_token - r.arrival)
        for r in self.done:
            tok[min(nwin - 1, int(r.done // w))] += r.output / w
        return dict(t=[w * (k + 0.5) for k in range(nwin)], arrivals_per_s=arr, output_tokens_per_s=tok,
                    ttft_p90_ms=[1e3 * _pct(sorted(x), 0.9) for x in ttft], timeouts=tout,
                    roles=[list(x) for x in self.roles_over_time])


def _pct(xs: list, q: float) -> float:
    if not xs:
        return math.nan
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _split(total: int, weights: list[float]) -> list[int]:
    """Group index per instance: at least one per group, the rest by largest remainder of the weights."""
    g = len(weights)
    if total < g:
        raise ValueError(f"instances: {total} cannot give each of the {g} scenario groups one; add instances")
    counts = [1] * g
    rest = total - g
    s = sum(weights) or 1.0
    want = [rest * w / s for w in weights]
    for i in range(g):
        counts[i] += int(want[i])
    left = total - sum(counts)
    for i in sorted(range(g), key=lambda i: -(want[i] - int(want[i])))[:left]:
        counts[i] += 1
    return [i for i in range(g) for _ in range(counts[i])]


# --------------------------------------------------------------------------- driver

def simulate_all(s, hw, cfg: SimConfig, trace: list[Request], scenarios, duration: float,
                 systems=SYSTEMS) -> list[tuple[dict, dict]]:
    """Every system on a copy of the same trace: [(summary, series)]."""
    out = []
    for system in systems:
        tr = [Request(r.id, r.arrival, r.scenario, r.prompt, r.prefix, r.output, r.variant) for r in trace]
        sim = Simulation(s, hw, cfg, scenarios, system)
        summ = sim.run(tr, until=duration)
        out.append((summ, sim.series(tr)))
    return out


def plot(results, path: str, title: str) -> None:
    """Throughput, TTFT p90 and timeouts over time for every system (PNG, Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    ser0 = results[0][1]
    ax[0].plot(ser0["t"], ser0["arrivals_per_s"], color="k")
    ax[0].set_ylabel("arrivals / s")
    for summ, ser in results:
        label = summ["system"]
        ax[1].plot(ser["t"], ser["output_tokens_per_s"], label=label)
        ax[2].plot(ser["t"], ser["ttft_p90_ms"], label=label)
        ax[3].plot(ser["t"], ser["timeouts"], label=label)
    ax[1].set_ylabel("output tokens / s")
    ax[2].set_ylabel("TTFT p90 (ms)")
    ax[2].set_yscale("log")
    ax[3].set_ylabel("timeouts / window")
    ax[3].set_xlabel("time (s)")
    ax[1].legend(fontsize=8)
    import textwrap
    ax[0].set_title("\n".join(textwrap.wrap(title, 110)), fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def table(results) -> str:
    head = ("| system | KV transfer | requests | completed | timeouts | E2E out tok/s | TTFT SLO met | TTFT p50 ms "
            "| TTFT p99 ms | TPOT ms | KV transfer ms | prefix hit | ratio moves | prefill busy |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for summ, _ in results:
        r = summ
        lines.append(f"| {r['system']} | {r['kv_transfer']} | {r['requests']} | {r['completed']} | {r['timeouts']} "
                     f"| {r['e2e_output_tokens_per_s']:.0f} | {100 * r['ttft_slo_attainment']:.1f}% "
                     f"| {r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | {r['tpot_mean_ms']:.1f} "
                     f"| {r['kv_transfer_mean_ms']:.2f} | {100 * r['prefix_hit_rate']:.0f}% | {r['ratio_moves']} "
                     f"| {100 * r['prefill_busy_share']:.0f}% |")
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser("serve-sim", help="discrete-event simulation: mixed pool vs P/D-Serve groups on a trace")
    p.add_argument("--model", help="registry arch, e.g. pangu_pro_moe")
    p.add_argument("--preset", default="full")
    p.add_argument("--config-json")
    p.add_argument("--hardware", required=True)
    p.add_argument("--slo", default="ttft=2s,tpot=100ms")
    p.add_argument("--dtype", default="int8")
    p.add_argument("--prefill-shape", default=None, help="DEVICESxTP per prefill instance (default: one node, TP1)")
    p.add_argument("--decode-shape", default=None, help="DEVICESxTP per decode instance (default: one node, TP1)")
    p.add_argument("--prefill", type=int, default=6, help="prefill instances")
    p.add_argument("--decode", type=int, default=6, help="decode instances")
    p.add_argument("--arrival", default="bursty", help="poisson | bursty | tidal")
    p.add_argument("--rate", type=float, default=None, help="mean requests/s (default: 85%% of the estimated capacity)")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of trace")
    p.add_argument("--timeout", type=float, default=None, help="prefill start timeout in s (default 2 x TTFT SLO)")
    p.add_argument("--prefix-cache-tokens", type=int, default=None,
                   help="prefix-cache capacity per prefill DP group (default: the HBM left after weights and a batch)")
    p.add_argument("--switch-s", type=float, default=5.0, help="P/D-Serve: seconds to switch a drained instance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/serve_sim", help="directory for the PNG plot")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    cfg_model, name = model_from_args(args)
    s = model_shape(cfg_model)
    hw = load_hardware(args.hardware)
    slo = parse_slo(args.slo)
    prec = inf.Precision(args.dtype, "bf16" if "bf16" in tuple(hw.matmul_dtypes) else "fp16")
    inf.check_precision(prec, hw)
    dpn = hw.devices_per_node
    pi = inf.Instance(*(parse_shape(args.prefill_shape, "prefill-shape") or (dpn, 1)))
    di = inf.Instance(*(parse_shape(args.decode_shape, "decode-shape") or (dpn, 1)))
    if args.prefill < 1 or args.decode < 1:
        raise ValueError("instances: --prefill and --decode must be >= 1")
    if args.duration <= 0:
        raise ValueError(f"duration: {args.duration}; give > 0 seconds")
    cfg = SimConfig(n_prefill=args.prefill, n_decode=args.decode, prefill_inst=pi, decode_inst=di, precision=prec,
                    ttft_slo_s=slo.ttft_s, tpot_slo_s=slo.tpot_s,
                    timeout_s=args.timeout if args.timeout is not None else 2 * slo.ttft_s,
                    prefix_cache_tokens=args.prefix_cache_tokens, switch_s=args.switch_s)
    costs = _Costs(s, hw, cfg, DEFAULT_SCENARIOS)
    rate = args.rate if args.rate is not None else 0.85 * capacity_rps(s, hw, cfg, DEFAULT_SCENARIOS)
    trace = make_trace(args.arrival, rate, args.duration, DEFAULT_SCENARIOS, seed=args.seed)
    results = simulate_all(s, hw, cfg, trace, DEFAULT_SCENARIOS, args.duration)
    tag = f"_cache{args.prefix_cache_tokens}" if args.prefix_cache_tokens is not None else ""
    path = os.path.join(args.out, f"serve_sim_{args.arrival}{tag}.png")
    title = (f"{name} on {hw.name}: {args.prefill} P x {pi.label()} + {args.decode} D x {di.label()}, "
             f"{args.arrival} {rate:.2f} req/s, seed {args.seed} (model predictions)")
    plot(results, path, title)
    rep = dict(model=name, hardware=hw.name, arrival=args.arrival, rate_rps=rate, duration_s=args.duration,
               seed=args.seed, slo=dict(ttft_ms=1e3 * slo.ttft_s, tpot_ms=1e3 * slo.tpot_s),
               prefill_instances=args.prefill, decode_instances=args.decode, prefill_instance=pi.label(),
               decode_instance=di.label(), decode_sequences_per_instance=costs.decode_cap,
               prefix_cache_tokens_per_dp_group=costs.prefix_cache_tokens,
               scenarios=[asdict(sc) for sc in DEFAULT_SCENARIOS], plot=path,
               note="simulation on model-predicted service times, not measurements",
               results=[summ for summ, _ in results])
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        print(f"{title}\nplot: {path}")
        print(table(results))
    return 0


def capacity_rps(s, hw, cfg: SimConfig, scenarios) -> float:
    """Requests/s the deployment sustains at the mix's mean lengths without prefix-cache hits (the
    slower of the two pools)."""
    c = _Costs(s, hw, cfg, scenarios)
    tot = sum(sc.share for sc in scenarios)
    p_sec = d_tok = 0.0
    for sc in scenarios:
        r = Request(-1, 0, 0, sc.prompt, sc.prefix, sc.output)   # no prefix-cache hit assumed
        p_sec += sc.share / tot * c.prefill([r] * cfg.prefill_inst.dp * 4) / (cfg.prefill_inst.dp * 4)
        d_tok += sc.share / tot * sc.output
    step = c.step(c.decode_cap, c.ctx)
    decode_rps = cfg.n_decode * c.decode_cap / step / d_tok
    return min(cfg.n_prefill / p_sec, decode_rps)
