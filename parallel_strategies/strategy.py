"""Strategy files: how a training job is cut over a cluster, and how it is checked.

A strategy YAML holds `model`, `hardware`, `cluster`, `parallel_config` (MindFormers key names),
`recompute`, `noop_layers` and `training`. `load_strategy` reads and type-checks it; `validate`
checks it against a model shape and raises one-line `ValueError("<key>: <problem>; <fix>")`.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from .shape import ModelShape

PKG_DIR = os.path.dirname(os.path.abspath(__file__))
HARDWARE_DIR = os.path.join(PKG_DIR, "hardware")
STRATEGY_DIR = os.path.join(PKG_DIR, "strategies")
RECOMPUTE_POLICIES = ("none", "selective", "full")


@dataclass
class Hardware:
    """A device + network profile (parallel_strategies/hardware/*.yaml)."""
    name: str
    peak_tflops: float
    hbm_gb: float
    hbm_bandwidth_gbs: float
    devices_per_node: int
    intra_node_bandwidth_gbs: float
    inter_node_bandwidth_gbs: float
    supernode_devices: int
    supernode_bandwidth_gbs: float
    intra_node_latency_us: float
    inter_node_latency_us: float
    matmul_efficiency: float
    bandwidth_efficiency: float
    reserved_gb: float
    description: str = ""
    # Serving fields (parallel_strategies/inference.py); the defaults leave the training simulator unchanged.
    devices_per_npu: int = 1             # devices HCCL sees per NPU package as sold (2 dies per 910C)
    peak_int8_tops: float = 0.0          # dense INT8 matrix peak per device; 0 = no INT8 cube path
    matmul_dtypes: tuple = ("bf16", "fp16", "int8")  # matrix dtypes the device runs natively
    ep_dispatch_bandwidth_gbs: float = 0.0  # measured per-rank MoE dispatch bandwidth inside the scale-up
                                            # domain; 0 = link bandwidth x bandwidth_efficiency
    ep_combine_bandwidth_gbs: float = 0.0   # same for the combine all-to-all
    kv_transfer_bandwidth_gbs: float = 0.0  # per-device P->D KV-cache link (RDMA plane); 0 = inter-node link
    rdma_op_latency_us: float = 0.0      # fixed cost of one RDMA write (block-fixed KV transfer pays it per block)


@dataclass
class ParallelConfig:
    """Parallel sizes; names follow MindFormers' `parallel_config` where one exists."""
    data_parallel: int = 1
    model_parallel: int = 1        # tensor parallel (TP)
    pipeline_stage: int = 1        # pipeline parallel (PP)
    pp_interleave_num: int = 1     # virtual pipeline chunks per stage (VPP; MindFormers' name)
    expert_parallel: int = 1       # EP, carved out of data_parallel (MindFormers convention)
    context_parallel: int = 1      # CP (ring attention over the sequence)
    use_seq_parallel: bool = True  # Megatron sequence parallel inside the TP group
    vocab_emb_dp: bool = False     # keep embedding / lm_head replicated instead of vocab-sharded
    micro_batch_num: int = 1       # micro-batches per step per data-parallel rank
    micro_batch_size: int = 1      # sequences per micro-batch
    optimizer_shard: Any = True    # false | true (= "level1") | "level1" | "level2"
    moe_tp_extend_ep: bool = False # experts kept whole and spread over TP x EP ranks (MindSpeed's flag)
    hierarchical_alltoall: bool = False  # EP all-to-all: dedupe across nodes, then spread in-node

    @property
    def optimizer_level(self) -> Optional[str]:
        if self.optimizer_shard in (False, None, "none"):
            return None
        return "level1" if self.optimizer_shard is True else str(self.optimizer_shard)


@dataclass
class Cluster:
    nodes: int = 1
    devices_per_node: int = 8

    @property
    def world_size(self) -> int:
        return self.nodes * self.devices_per_node


@dataclass
class Training:
    seq_length: int = 4096
    compute_dtype: str = "bfloat16"
    image_tokens: int = 0          # VLM: merged image tokens per sequence (ViT sees 4x as many patches)


@dataclass
class Strategy:
    name: str
    model: dict
    hardware: str
    cluster: Cluster
    parallel_config: ParallelConfig
    recompute: str = "none"
    noop_layers: int = 0
    training: Training = field(default_factory=Training)
    description: str = ""
    path: str = ""

    # convenience -------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.cluster.world_size

    @property
    def global_batch_size(self) -> int:
        pc = self.parallel_config
        return pc.data_parallel * pc.micro_batch_size * pc.micro_batch_num

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.training.seq_length

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("path")
        return d


def _typed(cls, data: Any, where: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}; write `{where}: {{...}}`")
    names = [f.name for f in dataclasses.fields(cls)]
    for k in data:
        if k not in names:
            near = difflib.get_close_matches(k, names, n=3)
            raise ValueError(f"{where}.{k}: unknown key; did you mean {near or names}?")
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        v = data[f.name]
        default = getattr(cls(), f.name) if f.default is not dataclasses.MISSING or \
            f.default_factory is not dataclasses.MISSING else None
        if isinstance(default, bool) and not isinstance(v, bool) and f.name != "optimizer_shard":
            raise ValueError(f"{where}.{f.name}: expected true/false, got {v!r}")
        if isinstance(default, int) and not isinstance(default, bool) and \
                (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ValueError(f"{where}.{f.name}: expected a non-negative integer, got {v!r}")
        out[f.name] = v
    return cls(**out)


def strategy_from_dict(d: dict, path: str = "") -> Strategy:
    top = {f.name for f in dataclasses.fields(Strategy)} - {"path"}
    for k in d:
        if k not in top:
            raise ValueError(f"{k}: unknown strategy key; did you mean "
                             f"{difflib.get_close_matches(k, sorted(top), n=3) or sorted(top)}?")
    for k in ("name", "model", "hardware", "cluster", "parallel_config"):
        if k not in d:
            raise ValueError(f"{k}: missing; every strategy file needs name, model, hardware, cluster, parallel_config")
    rc = d.get("recompute", "none")
    if isinstance(rc, bool):
        rc = "full" if rc else "none"
    if rc not in RECOMPUTE_POLICIES:
        raise ValueError(f"recompute: {rc!r} is not a policy; use one of {RECOMPUTE_POLICIES}")
    return Strategy(
        name=str(d["name"]), model=dict(d["model"]), hardware=str(d["hardware"]),
        cluster=_typed(Cluster, d["cluster"], "cluster"),
        parallel_config=_typed(ParallelConfig, d["parallel_config"], "parallel_config"),
        recompute=rc, noop_layers=int(d.get("noop_layers", 0)),
        training=_typed(Training, d.get("training"), "training"),
        description=str(d.get("description", "")), path=path)


def find_file(name: str, folder: str) -> str:
    if os.path.exists(name):
        return name
    for cand in (os.path.join(folder, name), os.path.join(folder, name + ".yaml")):
        if os.path.exists(cand):
            return cand
    have = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))
    raise ValueError(f"{name}: no such file; choose one of {have} or give a path")


def load_strategy(path: str) -> Strategy:
    path = find_file(path, STRATEGY_DIR)
    with open(path, encoding="utf-8") as f:
        return strategy_from_dict(yaml.safe_load(f) or {}, path)


def load_hardware(name: str) -> Hardware:
    path = find_file(name, HARDWARE_DIR)
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    names = {f.name for f in dataclasses.fields(Hardware)}
    for k in data:
        if k not in names:
            raise ValueError(f"hardware.{k}: unknown key in {path}; valid keys are {sorted(names)}")
    missing = [f.name for f in dataclasses.fields(Hardware)
               if f.name not in data and f.default is dataclasses.MISSING]
    if missing:
        raise ValueError(f"hardware: {path} misses {missing}; add them")
    return Hardware(**data)


def save_strategy(s: Strategy, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(s.to_dict(), f, sort_keys=False)


# --------------------------------------------------------------------------- validation

def layer_slots(s: ModelShape, st: Strategy) -> int:
    return s.num_layers + st.noop_layers


def validate_structure(st: Strategy, s: ModelShape, hw: Optional[Hardware] = None) -> None:
    """Divisibility and size rules; raises ValueError("<key>: <problem>; <fix>") on the first one."""
    pc, c = st.parallel_config, st.cluster
    dp, tp, pp, v, ep, cp = (pc.data_parallel, pc.model_parallel, pc.pipeline_stage,
                             pc.pp_interleave_num, pc.expert_parallel, pc.context_parallel)
    for k in ("data_parallel", "model_parallel", "pipeline_stage", "pp_interleave_num", "expert_parallel",
              "context_parallel", "micro_batch_num", "micro_batch_size"):
        if getattr(pc, k) < 1:
            raise ValueError(f"parallel_config.{k}: must be >= 1, got {getattr(pc, k)}")
    if hw is not None and c.devices_per_node > hw.devices_per_node:
        raise ValueError(f"cluster.devices_per_node: {c.devices_per_node} but a {hw.name} node has "
                         f"{hw.devices_per_node}; use at most {hw.devices_per_node}")
    prod = dp * tp * pp * cp
    if prod != c.world_size:
        raise ValueError(f"parallel_config: data_parallel*model_parallel*pipeline_stage*context_parallel = "
                         f"{dp}*{tp}*{pp}*{cp} = {prod} != world size {c.nodes}*{c.devices_per_node} = "
                         f"{c.world_size}; make the product equal the cluster size")
    if s.num_heads % tp:
        raise ValueError(f"parallel_config.model_parallel: {s.num_heads} attention heads not divisible by {tp}; "
                         f"use a divisor of {s.num_heads}")
    if s.num_kv_heads % tp:
        raise ValueError(f"parallel_config.model_parallel: {s.num_kv_heads} KV heads not divisible by {tp}; "
                         f"use a divisor of {s.num_kv_heads}")
    moe_tp = 1 if pc.moe_tp_extend_ep else tp
    if pc.moe_tp_extend_ep and s.is_moe and s.num_experts % (ep * tp):
        raise ValueError(f"parallel_config.moe_tp_extend_ep: {s.num_experts} experts not divisible by "
                         f"expert_parallel*model_parallel = {ep * tp}; turn it off or change the sizes")
    if s.moe_ffn and s.moe_ffn % moe_tp:
        raise ValueError(f"parallel_config.model_parallel: moe_intermediate_size {s.moe_ffn} not divisible by "
                         f"{tp}; use a divisor or set moe_tp_extend_ep: true")
    for what, n in ( ("shared expert intermediate size", s.shared_ffn),
                    ("intermediate_size", s.dense_ffn if s.num_dense_layers else 0)):
        if n and n % tp:
            raise ValueError(f"parallel_config.model_parallel: {what} {n} not divisible by {tp}; "
                             f"use a divisor of {n}")
    if not pc.vocab_emb_dp and s.vocab_size % tp:
        raise ValueError(f"parallel_config.model_parallel: vocab {s.vocab_size} not divisible by {tp}; "
                         "set vocab_emb_dp: true or pick another model_parallel")
    if s.vision is not None and s.vision.num_heads % tp:
        raise ValueError(f"parallel_config.model_parallel: {s.vision.num_heads} ViT heads not divisible by {tp}")
    if ep > 1 and not s.is_moe:
        raise ValueError(f"parallel_config.expert_parallel: {ep} but the model has no experts; set 1")
    if s.is_moe:
        if s.num_experts % ep:
            raise ValueError(f"parallel_config.expert_parallel: {s.num_experts} experts not divisible by {ep}; "
                             f"use a divisor of {s.num_experts}")
        if dp % ep:
            raise ValueError(f"parallel_config.expert_parallel: {ep} must divide data_parallel {dp} "
                             "(EP is carved out of DP); change one of them")
        g = s.num_expert_groups
        if g > 1 and g % ep:
            raise ValueError(f"parallel_config.expert_parallel: MoGE has {g} expert groups, {ep} EP ranks would "
                             f"split a group across devices and lose MoGE's zero imbalance; use a divisor of {g}")
    slots = layer_slots(s, st)
    if slots % (pp * v):
        need = (-s.num_layers) % (pp * v)
        raise ValueError(f"noop_layers: {s.num_layers} layers + {st.noop_layers} no-op = {slots} not divisible by "
                         f"pipeline_stage*pp_interleave_num = {pp * v}; use noop_layers: {need}")
    if st.noop_layers >= slots // pp:
        raise ValueError(f"noop_layers: {st.noop_layers} would leave a pipeline stage without real layers; "
                         "use fewer stages")
    if pp > 1 and pc.micro_batch_num < pp:
        raise ValueError(f"parallel_config.micro_batch_num: {pc.micro_batch_num} < pipeline_stage {pp}; "
                         f"use at least {pp} micro-batches")
    if v > 1 and pc.micro_batch_num % pp:
        raise ValueError(f"parallel_config.micro_batch_num: interleaved pipeline needs a multiple of "
                         f"pipeline_stage {pp}, got {pc.micro_batch_num}")
    if v > 1 and pp == 1:
        raise ValueError("parallel_config.pp_interleave_num: needs pipeline_stage > 1; set 1")
    S = st.training.seq_length
    shard = cp * (tp if pc.use_seq_parallel else 1)
    if S % shard:
        raise ValueError(f"training.seq_length: {S} not divisible by context_parallel*model_parallel = {shard} "
                         "(sequence parallel); change the sequence length or the sizes")
