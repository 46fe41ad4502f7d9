"""Strategy -> MindSpore auto-parallel settings and per-parameter layouts.

Parameters get logical axis names from name-based rules (`LOGICAL_RULES`, MaxText-style); a
strategy maps logical axes to mesh axes (`axis_rules`). The mesh inside one pipeline stage is
`(dp, ep, cp, tp)` with tp innermost (contiguous ranks, i.e. inside a node) and ep carved out of
data parallel (MindFormers' convention). The model code never sees any of this.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Optional

from .shape import ModelShape, model_shape, parameter_shapes
from .strategy import Strategy, layer_slots

MESH_AXES = ("dp", "ep", "cp", "tp")

# (regex over the parameter name, logical axes per dim). First match wins; no match is an error.
LOGICAL_RULES: list[tuple[str, tuple]] = [
    (r"(^|\.)embed_tokens\.weight$", ("vocab", "embed")),
    (r"^lm_head\.weight$", ("vocab", "embed")),
    (r"\.experts\.\d+\.(gate|up)_proj\.weight$", ("expert_mlp", "embed")),
    (r"\.experts\.\d+\.down_proj\.weight$", ("embed", "expert_mlp")),
    (r"\.experts\.(gate|up)_proj(\.weight)?$", ("expert", "expert_mlp", "embed")),   # stacked [E, F, H]
    (r"\.experts\.down_proj(\.weight)?$", ("expert", "embed", "expert_mlp")),
    (r"\.mlp\.gate\.weight$", ("router", "embed")),
    (r"\.mlp\.(gate\.)?router_scale$", ("none", "router")),
    (r"\.mlp\.gate\.e_score_correction_bias$", ("router",)),
    (r"(mlp|shared_experts?)\.(gate|up)_proj\.weight$", ("mlp", "embed")),
    (r"(mlp|shared_experts?)\.(gate|up)_proj\.bias$", ("mlp",)),
    (r"(mlp|shared_experts?)\.down_proj\.weight$", ("embed", "mlp")),
    (r"(mlp|shared_experts?)\.down_proj\.bias$", ("embed",)),
    (r"self_attn\.q_proj\.weight$", ("heads", "embed")),
    (r"self_attn\.q_proj\.bias$", ("heads",)),
    (r"self_attn\.[kv]_proj\.weight$", ("kv_heads", "embed")),
    (r"self_attn\.[kv]_proj\.bias$", ("kv_heads",)),
    (r"self_attn\.o_proj\.weight$", ("embed", "heads")),
    (r"self_attn\.o_proj\.bias$", ("embed",)),
    (r"self_attn\.q_a_proj\.weight$", ("q_lora", "embed")),
    (r"self_attn\.q_b_proj\.weight$", ("heads", "q_lora")),
    (r"self_attn\.kv_a_proj_with_mqa\.weight$", ("kv_lora", "embed")),
    (r"self_attn\.kv_b_proj\.weight$", ("heads", "kv_lora")),
    (r"\.eh_proj\.weight$", ("embed", "embed2")),
    (r"(layernorm|norm|norm1|norm2|enorm|hnorm|ln_q)\.weight$", ("norm",)),
    (r"^visual\.patch_embed\.proj\.weight$", ("vit_embed", "channels", "time", "height", "width")),
    (r"^visual\.blocks\.\d+\.attn\.qkv\.weight$", ("vit_heads", "vit_embed")),
    (r"^visual\.blocks\.\d+\.attn\.qkv\.bias$", ("vit_heads",)),
    (r"^visual\.blocks\.\d+\.attn\.proj\.weight$", ("vit_embed", "vit_heads")),
    (r"^visual\.blocks\.\d+\.attn\.proj\.bias$", ("vit_embed",)),
    (r"^visual\.merger\.mlp\.0\.weight$", ("vit_mlp", "vit_merge")),
    (r"^visual\.merger\.mlp\.0\.bias$", ("vit_mlp",)),
    (r"^visual\.merger\.mlp\.2\.weight$", ("embed", "vit_mlp")),
    (r"^visual\.merger\.mlp\.2\.bias$", ("embed",)),
]
_COMPILED = [(re.compile(p), axes) for p, axes in LOGICAL_RULES]
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")
_EXPERT_RE = re.compile(r"\.experts\.(\d+)\.")


def axis_rules(st: Strategy) -> dict[str, Optional[str]]:
    """Logical axis -> mesh axis (None = replicated) for this strategy."""
    pc = st.parallel_config
    tp = "tp" if pc.model_parallel > 1 else None
    ep = "ep" if pc.expert_parallel > 1 else None
    expert = (("ep", "tp") if ep and tp else ep or tp) if pc.moe_tp_extend_ep else ep
    return {
        "vocab": None if pc.vocab_emb_dp else tp,
        "heads": tp, "kv_heads": tp, "mlp": tp, "expert_mlp": None if pc.moe_tp_extend_ep else tp,
        "expert": expert,
        "vit_heads": tp, "vit_mlp": tp,
    }  # every other logical axis (embed, norm, router, q_lora, kv_lora, ...) is replicated


def _mesh_size(m, sizes: dict) -> int:
    if m is None:
        return 1
    return math.prod(sizes[a] for a in m) if isinstance(m, tuple) else sizes[m]


def mesh_sizes(st: Strategy) -> dict[str, int]:
    pc = st.parallel_config
    return {"dp": pc.data_parallel // pc.expert_parallel, "ep": pc.expert_parallel,
            "cp": pc.context_parallel, "tp": pc.model_parallel}


@dataclass(frozen=True)
class ParamLayout:
    name: str
    shape: tuple
    logical: tuple                # logical axis per dim
    mesh: tuple                   # mesh axis per dim (None = replicated)
    shards: tuple                 # shard count per dim
    stage: int                    # pipeline stage holding it
    expert_rank: Optional[int]    # per-expert params: the EP rank that owns the expert
    replicas: int                 # devices of one stage holding this same shard (grad-sync / ZeRO group)

    @property
    def local_numel(self) -> int:
        return math.prod(d // s for d, s in zip(self.shape, self.shards))

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def tensor_map(self) -> tuple:
        return tuple("None" if m is None else m for m in self.mesh)

    @property
    def is_expert(self) -> bool:
        return ".experts." in self.name


def layer_stage(layer: int, shape: ModelShape, st: Strategy) -> int:
    """Stage of decoder layer `layer` (no-op layers are appended after the real ones)."""
    pc = st.parallel_config
    chunk = layer_slots(shape, st) // (pc.pipeline_stage * pc.pp_interleave_num)
    return (layer // chunk) % pc.pipeline_stage


def param_stage(name: str, shape: ModelShape, st: Strategy) -> int:
    last = st.parallel_config.pipeline_stage - 1
    m = _LAYER_RE.match(name)
    if m:
        i = int(m.group(1))
        return last if i >= shape.num_layers else layer_stage(i, shape, st)  # MTP layers ride with the head
    if name.startswith(("model.embed_tokens", "visual.")):
        return 0
    return last  # model.norm, lm_head


def logical_axes(name: str, ndim: int) -> tuple:
    return _logical_axes(re.sub(r"\.\d+\.", ".0.", name), ndim)


@lru_cache(maxsize=4096)
def _logical_axes(name: str, ndim: int) -> tuple:
    for rx, axes in _COMPILED:
        if rx.search(name):
            if len(axes) != ndim:
                raise ValueError(f"{name}: rule {rx.pattern} gives {len(axes)} axes for a {ndim}-D parameter; "
                                 "fix LOGICAL_RULES")
            return axes
    raise ValueError(f"{name}: no logical-axis rule matches; add one to parallel_strategies.apply.LOGICAL_RULES")


def parameter_layouts(st: Strategy, cfg: Any, shapes: Optional[Iterable[tuple[str, tuple]]] = None
                      ) -> list[ParamLayout]:
    """A layout for every parameter; raises if a sharded dimension does not divide."""
    s = model_shape(cfg)
    rules, sizes = axis_rules(st), mesh_sizes(st)
    stage_devices = math.prod(sizes.values())
    out = []
    for name, shp in (parameter_shapes(s) if shapes is None else shapes):
        shp = tuple(int(d) for d in shp)
        logical = logical_axes(name, len(shp))
        mesh = tuple(rules.get(a) for a in logical)
        shards = tuple(_mesh_size(m, sizes) for m in mesh)
        for d, (n, k) in enumerate(zip(shp, shards)):
            if n % k:
                raise ValueError(f"{name}: dim {d} of {shp} ({logical[d]} -> {mesh[d]}) not divisible by {k}; "
                                 "change the strategy sizes")
        expert_rank = None
        m = _EXPERT_RE.search(name)
        owners = _mesh_size(rules["expert"], sizes)
        if m and owners > 1:
            expert_rank = int(m.group(1)) // (s.num_experts // owners)
        # devices of one stage holding this exact shard: a per-expert param lives on 1/owners of them
        held_by = stage_devices // (owners if expert_rank is not None else 1)
        out.append(ParamLayout(name, shp, logical, mesh, shards, param_stage(name, s, st), expert_rank,
                               held_by // math.prod(shards)))
    return out


# --------------------------------------------------------------------------- MindSpore side

def auto_parallel_context(st: Strategy) -> dict:
    """Keyword arguments for `mindspore.set_auto_parallel_context` (semi-auto parallel)."""
    pc = st.parallel_config
    kw = dict(parallel_mode="semi_auto_parallel", device_num=st.world_size,
              pipeline_stages=pc.pipeline_stage, enable_parallel_optimizer=pc.optimizer_level is not None,
              gradients_mean=True, dataset_strategy="data_parallel", enable_alltoall=pc.expert_parallel > 1)
    if pc.optimizer_level is not None:
        kw["parallel_optimizer_config"] = {"optimizer_level": pc.optimizer_level}
    if pc.pipeline_stage > 1:
        kw["pipeline_config"] = {"pipeline_interleave": pc.pp_interleave_num > 1,
                                 "pipeline_scheduler": "1f1b"}
    return kw


def mindspore_layouts(st: Strategy, layouts: list[ParamLayout]) -> dict:
    """name -> `mindspore.parallel.Layout` (device matrix = one stage's (dp, ep, cp, tp) mesh)."""
    from mindspore.parallel import Layout
    sizes = mesh_sizes(st)
    base = Layout(tuple(sizes[a] for a in MESH_AXES), MESH_AXES)
    return {pl.name: base(*pl.tensor_map()) for pl in layouts}


def op_layouts(st: Strategy) -> dict[str, tuple]:
    """Per-op input layouts (mesh axes per dim) for the ops whose sharding is not implied by weights."""
    pc = st.parallel_config
    batch = ("dp", "ep")
    seq_sp = ("cp", "tp") if pc.use_seq_parallel else "cp"
    return {
        "embedding.input_ids[B,S]": (batch, "cp"),
        "hidden[B,S,H] (between sub-layers)": (batch, seq_sp, None),
        "attention.q[B,N,S,D]": (batch, "tp", "cp", None),
        "attention.kv[B,Nkv,S,D]": (batch, "tp", "cp", None),
        "moe.dispatch_all_to_all[E,C,H]": ("ep", None, None),
        "lm_head.logits[B,S,V]": (batch, "cp", None if pc.vocab_emb_dp else "tp"),
    }


def assign_pipeline_stages(net, st: Strategy, shape: ModelShape) -> int:
    """Set `pipeline_stage` (and `pipeline_segment` for VPP) on every decoder-layer cell by name."""
    pc = st.parallel_config
    chunk = layer_slots(shape, st) // (pc.pipeline_stage * pc.pp_interleave_num)
    n = 0
    for name, cell in net.cells_and_names():
        m = re.match(r"^(?:.*\.)?layers\.(\d+)$", name)
        if not m:
            continue
        i = int(m.group(1))
        stage = layer_stage(i, shape, st) if i < shape.num_layers else pc.pipeline_stage - 1
        cell.pipeline_stage = stage
        if pc.pp_interleave_num > 1:
            cell.pipeline_segment = (i // chunk) // pc.pipeline_stage if i < shape.num_layers \
                else pc.pp_interleave_num - 1
        n += 1
    return n


def apply_to_network(net, st: Strategy, cfg: Any):
    """Ascend path: wrap `net` in `AutoParallel` with this strategy's pipeline / optimizer settings,
    stage assignment and per-parameter layouts. Needs an initialised communication group."""
    from mindspore.parallel.auto_parallel import AutoParallel
    shape = model_shape(cfg)
    pc = st.parallel_config
    names = [(p.name, tuple(p.shape)) for p in net.trainable_params()]
    layouts = parameter_layouts(st, shape, names)
    assign_pipeline_stages(net, st, shape)
    plan = mindspore_layouts(st, layouts)
    sizes = mesh_sizes(st)
    from mindspore.parallel import Layout
    batch = Layout(tuple(sizes[a] for a in MESH_AXES), MESH_AXES)(("dp", "ep"), "cp")
    net.shard(in_strategy=(batch, batch, batch), parameter_plan=plan)  # input_ids, position_ids, segment_ids
    ap = AutoParallel(net, parallel_mode="semi_auto")
    if pc.pipeline_stage > 1:
        ap.pipeline(stages=pc.pipeline_stage, interleave=pc.pp_interleave_num > 1)
    if pc.optimizer_level is not None:
        ap.hsdp(optimizer_level=pc.optimizer_level)
    ap.dataset_strategy("data_parallel")
    return ap
