"""Strategy -> per-parameter layouts: the one plan the simulator, `layouts` and the trainer read.

Every parameter carries its logical axes, declared where the model creates it
(pangu.common.layers.param; read with the spec's `parameters`, parallel_strategies.shape). A
strategy maps logical axes to mesh axes with ONE rules table (`axis_rules`, MaxText's logical axis
rules). The mesh inside one pipeline stage is `(dp, ep, cp, tp)` with tp innermost (contiguous ranks,
i.e. inside a node) and ep carved out of data parallel (MindFormers' convention). The model code never
sees any of this: parallel_strategies.parallelize cuts the parameters by these rules and wires the
collectives, on CPU and on Ascend alike (there is no semi-auto `shard()` path).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from .shape import ModelShape, model_shape, parameters
from .strategy import Strategy, layer_slots

MESH_AXES = ("dp", "ep", "cp", "tp")
# decoder layer i of any model: `model.layers.{i}.` (MindVL nests its decoder as `language_model.model...`)
LAYER_RE = re.compile(r"(?:^|\.)model\.layers\.(\d+)\.")


def axis_rules(st: Strategy) -> dict[str, Optional[str]]:
    """Logical axis -> mesh axis (None = replicated) for this strategy: the one rules table."""
    pc = st.parallel_config
    tp = "tp" if pc.model_parallel > 1 else None
    ep = "ep" if pc.expert_parallel > 1 else None
    expert = (("ep", "tp") if ep and tp else ep or tp) if pc.moe_tp_extend_ep else ep
    return {
        "vocab": None if pc.vocab_emb_dp else tp,
        "heads": tp, "kv_heads": tp, "mlp": tp, "expert_mlp": None if pc.moe_tp_extend_ep else tp,
        "expert": expert,
        "vit_heads": tp, "vit_mlp": tp,
    }  # every other logical axis (embed, norm, router, q_lora, kv_lora, mtp_concat, ...) is replicated


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
    m = LAYER_RE.search(name)
    if m:
        i = int(m.group(1))
        return last if i >= shape.num_layers else layer_stage(i, shape, st)  # MTP layers ride with the head
    if ".model.embed_tokens." in f".{name}" or name.startswith("visual."):   # embeddings, vision tower
        return 0
    return last  # model.norm, lm_head


def parameter_layouts(st: Strategy, cfg: Any, params: Optional[Iterable] = None) -> list[ParamLayout]:
    """A layout for every parameter (`params`: the spec's ParamInfo list, default all of the model's);
    raises if a sharded dimension does not divide."""
    s = model_shape(cfg)
    rules, sizes = axis_rules(st), mesh_sizes(st)
    stage_devices = math.prod(sizes.values())
    out = []
    for p in (parameters(cfg) if params is None else params):
        name, shp, logical = p.name, tuple(int(d) for d in p.shape), tuple(p.axes)
        mesh = tuple(rules.get(a) for a in logical)
        shards = tuple(_mesh_size(m, sizes) for m in mesh)
        for d, (n, k) in enumerate(zip(shp, shards)):
            if n % k:
                raise ValueError(f"{name}: dim {d} of {shp} ({logical[d]} -> {mesh[d]}) not divisible by {k}; "
                                 "change the strategy sizes")
        # devices of one stage holding this exact shard (routed experts are stacked [E, ...]: their
        # expert dimension is sharded like any other, so an EP rank holds E / ep of them)
        out.append(ParamLayout(name, shp, logical, mesh, shards, param_stage(name, s, st),
                               stage_devices // math.prod(shards)))
    return out
