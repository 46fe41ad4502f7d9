"""Shard a built model for tensor, expert and data parallelism, from outside the model math.

`parallelize(model, cfg, strategy, mesh)` (torchtitan's `parallelize.py`, Megatron's layers) reads the ONE
rules table (`apply.axis_rules`) and every parameter's logical axes (declared where the model creates
it), and then, for this rank of the mesh (parallel_strategies.mesh):

- cuts every sharded parameter to this rank's slice (the full model is built first, identically on every
  rank from the recipe's seed, so a parallel run starts from exactly the single-process weights);
- tensor parallel (mesh axis tp): a Linear whose output axis is sharded is column-parallel (`comm_in` =
  CopyToGroup: identity forward, input gradient summed over tp), one whose input axis is sharded is
  row-parallel (`comm_out` = ReduceFromGroup before the bias); attention modules get their local head
  counts; the embedding becomes VocabParallelEmbedding and the lm_head's loss VocabParallelCrossEntropy
  (logits never gathered); routed experts are cut along their intermediate width (the expert block's
  input and routing weights are copied in, its output summed over tp);
- expert parallel (mesh axis ep): each rank keeps E/ep experts; tokens are dispatched by the
  all-gather dispatcher (AllGather of the ep group's tokens, routing weights and expert ids; each rank
  runs its experts on the assignments that chose them; the partial outputs are summed and each rank
  keeps its own tokens, which is a ReduceScatter done as AllReduce + slice). MindSpore's AlltoAll and
  ReduceScatter have no CPU kernels, and this dispatcher is the one used on every backend; its cost is
  ep x the token traffic of an all-to-all, and every rank computes its experts on all gathered
  assignments with the foreign ones weighted 0 (static shapes), so EP divides expert memory, not expert
  FLOPs (docs/parallel_strategies.md);
- the routing statistics (balance loss, imbalance score) are summed over the group the model's
  balance scope names: Pro and Ultra's "global" = every data-parallel rank (what one process computes
  on the whole global batch), Ultra's "ep_group" = the rank's EP group, "micro_batch" = none.

The returned ParallelPlan tells the trainer how each parameter is cut (to gather full tensors for
checkpoints and slice them on load), which gradients are summed over which group, and how to add up
the global gradient norm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

import ops.adamw as adamw_ops

from .apply import axis_rules, parameter_layouts
from .collectives import AllGatherRows, AllReduceMax, CopyToGroup, GatherFromGroup, ReduceFromGroup, ScatterFromGroup
from .mesh import Mesh

SHARDABLE = ("pangu_pro_moe", "pangu_ultra_moe")   # architectures with a tensor / expert parallel plan


@dataclass
class ParallelPlan:
    """How one rank holds the model: {parameter name: ((dim, mesh axis), ...)} for the sharded ones."""
    mesh: Mesh
    cuts: dict = field(default_factory=dict)
    dispatcher: str = "none"

    def cut(self, name: str) -> tuple:
        """((dim, mesh axis), ...) of parameter `name` (or of its optimiser state, adam_m.NAME)."""
        return self.cuts.get(base_name(name), ())

    def is_expert(self, name: str) -> bool:
        """Sharded over ep: its gradient is summed over the expert_data group, not the data group."""
        return any(axis == "ep" for _, axis in self.cut(name))

    def local(self, name: str, full: np.ndarray) -> np.ndarray:
        """This rank's slice of the full tensor `full` of parameter `name`."""
        out = full
        _, e, t = self.mesh.coords
        for dim, axis in self.cut(name):
            parts, index = (self.mesh.tp, t) if axis == "tp" else (self.mesh.ep, e)
            size = out.shape[dim] // parts
            out = np.take(out, np.arange(index * size, (index + 1) * size), axis=dim)
        return np.require(out, requirements="C")   # (np.ascontiguousarray would make a 0-d array 1-d)

    def full_shape(self, name: str, local_shape: tuple) -> tuple:
        shape = list(local_shape)
        for dim, axis in self.cut(name):
            shape[dim] *= self.mesh.tp if axis == "tp" else self.mesh.ep
        return tuple(shape)


# ----------------------------------------------------------------------------- replacement cells
class VocabParallelEmbedding(nn.Cell):
    """Rows [start, start + V/tp) of the embedding; other ids look up zeros; the rows are summed over tp."""

    def __init__(self, weight, start: int, rows: int, group: str):
        super().__init__()
        self.weight = weight                 # (cut to its [rows, H] slice by parallelize)
        self.start, self.rows = start, rows
        self.reduce = ReduceFromGroup(group)

    def construct(self, ids):
        local = ids - self.start
        inside = ops.logical_and(local >= 0, local < self.rows)
        rows = ops.gather(self.weight, ops.where(inside, local, ops.zeros_like(local)), 0)
        return self.reduce(rows * inside.astype(rows.dtype)[..., None])


class VocabParallelCrossEntropy(nn.Cell):
    """masked_cross_entropy of logits sharded over the vocabulary (this rank: ids [start, start + V/tp)).

    nll = log(sum_v exp(l_v - m)) + m - l_y with m = max_v l_v: the max, the sum of exponentials and the
    target logit are each reduced over tp, so the [.., V] logits are never gathered."""

    def __init__(self, start: int, group: str, size: int, rank: int):
        super().__init__()
        self.start = start
        self.max = AllReduceMax(group, size, rank)
        self.sum_exp = ReduceFromGroup(group)
        self.target = ReduceFromGroup(group)

    def construct(self, logits_BSV, labels_BS, mask_BS):
        logits = logits_BSV.astype(ms.float32)
        m = self.max(logits.max(-1, keepdims=True))
        s = self.sum_exp(ops.exp(logits - m).sum(-1))
        local = labels_BS.astype(ms.int32) - self.start
        inside = ops.logical_and(local >= 0, local < logits.shape[-1])
        picked = ops.gather_elements(logits, 2, ops.where(inside, local, ops.zeros_like(local))[:, :, None])
        z = self.target(picked.squeeze(-1) * inside.astype(logits.dtype))
        nll = ops.log(s) + m.squeeze(-1) - z
        mask = mask_BS.astype(logits.dtype)
        return (nll * mask).sum() / ops.maximum(mask.sum(), 1.0)


class ExpertDispatch(nn.Cell):
    """(x_TH, weights_TK, experts_TK) of this rank's tokens -> what this rank's experts compute on.

    ep > 1: every ep rank's tokens (AllGather), expert ids made local (id - first), assignments to other
    ranks' experts weighted 0 and pointed at local expert 0. tp > 1: x and the weights are copied into the
    tensor-parallel region (their gradients are partial on each tp rank)."""

    def __init__(self, ep_group, ep: int, ep_rank: int, first: int, local_experts: int, tp_group):
        super().__init__()
        self.has_ep, self.has_tp = ep_group is not None, tp_group is not None
        self.first, self.local_experts = first, local_experts
        if self.has_ep:
            self.gather_x = GatherFromGroup(ep_group, ep, ep_rank)
            self.gather_w = GatherFromGroup(ep_group, ep, ep_rank)
            self.gather_ids = AllGatherRows(ep_group, ep, ep_rank)
        if self.has_tp:
            self.copy_x = CopyToGroup(tp_group)
            self.copy_w = CopyToGroup(tp_group)

    def construct(self, x_TH, weights_TK, experts_TK):
        if self.has_ep:
            x_TH = self.gather_x(x_TH)
            weights_TK = self.gather_w(weights_TK)
            # ids travel as float32 (exact below 2**24): the CPU sub-group gather is an AllReduce-sum
            local = ops.stop_gradient(self.gather_ids(experts_TK.astype(ms.float32))).astype(experts_TK.dtype) - self.first
            mine = ops.logical_and(local >= 0, local < self.local_experts)
            weights_TK = weights_TK * mine.astype(weights_TK.dtype)
            experts_TK = ops.where(mine, local, ops.zeros_like(local))
        if self.has_tp:
            x_TH = self.copy_x(x_TH)
            weights_TK = self.copy_w(weights_TK)
        return x_TH, weights_TK, experts_TK


class ExpertCombine(nn.Cell):
    """The experts' partial output -> this rank's tokens: summed over tp, then over ep keeping own rows."""

    def __init__(self, ep_group, ep: int, ep_rank: int, tp_group):
        super().__init__()
        self.has_ep, self.has_tp = ep_group is not None, tp_group is not None
        if self.has_tp:
            self.reduce = ReduceFromGroup(tp_group)
        if self.has_ep:
            self.scatter = ScatterFromGroup(ep_group, ep, ep_rank)

    def construct(self, y_TH):
        if self.has_tp:
            y_TH = self.reduce(y_TH)
        if self.has_ep:
            y_TH = self.scatter(y_TH)
        return y_TH


# ----------------------------------------------------------------------------- the plan
def check_supported(arch: str, cfg, strategy) -> None:
    """One-line refusals for what the explicit plan cannot run (before any group or graph exists)."""
    pc = strategy.parallel_config
    if pc.pipeline_stage > 1 or pc.context_parallel > 1:
        name, value = ("pipeline_stage", pc.pipeline_stage) if pc.pipeline_stage > 1 else \
            ("context_parallel", pc.context_parallel)
        raise ValueError(f"parallel_config.{name}: {value} is planned and simulated, not trained: it needs "
                         "point-to-point Send/Recv (pipeline) or ring attention (context), which this trainer "
                         "does not run; train with data / tensor / expert parallel (e.g. tiny_cpu_dp2tp2)")
    sharded = pc.model_parallel > 1 or pc.expert_parallel > 1
    if sharded and arch not in SHARDABLE:
        raise ValueError(f"parallel_config: {arch} has no tensor / expert parallel plan (only {', '.join(SHARDABLE)}); "
                         "train it data-parallel (model_parallel: 1, expert_parallel: 1)")
    for flag, why in (("moe_tp_extend_ep", "experts spread over TP x EP"),
                      ("hierarchical_alltoall", "a two-level all-to-all"),
                      ("use_seq_parallel", "sequence-parallel activations (ReduceScatter)")):
        if getattr(pc, flag) and (pc.model_parallel > 1 or pc.expert_parallel > 1):
            raise ValueError(f"parallel_config.{flag}: true ({why}) is simulated, not trained by the explicit "
                             f"plan; set {flag}: false")
    if pc.optimizer_level is not None and pc.data_parallel > 1:
        raise ValueError(f"parallel_config.optimizer_shard: {pc.optimizer_shard} (ZeRO) is simulated, not trained: "
                         "the trainer keeps the full AdamW state per rank; set optimizer_shard: false")
    if strategy.recompute != "none":
        raise ValueError(f"recompute: {strategy.recompute!r} is simulated, not trained; set recompute: none")
    if pc.model_parallel > 1 and getattr(cfg, "tie_word_embeddings", False) and not pc.vocab_emb_dp:
        raise ValueError("tie_word_embeddings: true with a vocabulary-sharded embedding is not supported; set "
                         "parallel_config.vocab_emb_dp: true or model.tie_word_embeddings: false")
    _divisible(cfg, strategy)


def _divisible(cfg, strategy) -> None:
    """Name the model dimension a strategy size does not divide."""
    pc = strategy.parallel_config
    tp, ep = pc.model_parallel, pc.expert_parallel
    dims = {"num_attention_heads": getattr(cfg, "num_attention_heads", None),
            "num_key_value_heads": getattr(cfg, "num_key_value_heads", None),
            "vocab_size": None if pc.vocab_emb_dp else getattr(cfg, "vocab_size", None),
            "intermediate_size": getattr(cfg, "intermediate_size", None),
            "moe_intermediate_size": getattr(cfg, "moe_intermediate_size", None),
            "shared_expert_intermediate_size": getattr(cfg, "shared_expert_intermediate_size", None)}
    for key, value in dims.items():
        if value and value % tp:
            raise ValueError(f"model.{key}: {value} is not divisible by model_parallel {tp}; use a divisor of "
                             f"{value} for model_parallel")
    experts = getattr(cfg, "num_experts", None) or getattr(cfg, "num_routed_experts", None)
    if experts and experts % ep:
        raise ValueError(f"model.num_experts: {experts} is not divisible by expert_parallel {ep}; use a divisor "
                         f"of {experts}")


def _stats_group(arch: str, cfg, mesh: Mesh):
    """The group the routing statistics are summed over (pangu.common.moe.MoEStats)."""
    scope = getattr(cfg, "aux_loss_scope", "global")
    return {"micro_batch": None, "ep_group": mesh.group("ep"), "global": mesh.group("data")}[scope]


def parallelize(model, cfg, arch: str, strategy, mesh: Mesh, log=print) -> ParallelPlan:
    """Shard `model` (built, initialised, not yet compiled) in place for this rank; see the module docstring."""
    from pangu.common.attention import GQAttention
    from pangu.common.layers import Embedding, Linear
    from pangu.common.mla import MultiHeadLatentAttention
    from pangu.common.moe import GroupedExperts, MoEStats

    check_supported(arch, cfg, strategy)
    pc = strategy.parallel_config
    tp, ep = mesh.tp, mesh.ep
    _, e_rank, t_rank = mesh.coords
    rules = axis_rules(strategy)
    plan = ParallelPlan(mesh)
    params = {name: p for name, p in model.parameters_and_names()}
    for name, p in params.items():
        cuts = tuple((d, rules.get(axis)) for d, axis in enumerate(p.logical_axes) if rules.get(axis))
        if cuts:
            plan.cuts[name] = cuts
    # every dimension the layouts shard must divide (the simulator's check, with the recipe's real sizes)
    parameter_layouts(strategy, cfg, [_Info(n, tuple(p.shape), p.logical_axes) for n, p in params.items()])

    stats_group = _stats_group(arch, cfg, mesh)
    replaced = {}
    for name, cell in list(model.cells_and_names()):
        if isinstance(cell, Linear) and tp > 1:
            out_axis, in_axis = (rules.get(a) for a in cell.weight.logical_axes)
            if out_axis == "tp":
                cell.comm_in = CopyToGroup(mesh.group("tp"))
            elif in_axis == "tp":
                cell.comm_out = ReduceFromGroup(mesh.group("tp"))
        elif isinstance(cell, GQAttention) and tp > 1:
            cell.num_heads //= tp
            cell.num_kv_heads //= tp
        elif isinstance(cell, MultiHeadLatentAttention) and tp > 1:
            cell.num_heads //= tp
            cell.k_rope_comm = CopyToGroup(mesh.group("tp"))     # the one rope key head feeds every head
        elif isinstance(cell, GroupedExperts) and (tp > 1 or ep > 1):
            local = cell.num_experts // ep
            ep_group = mesh.group("ep")
            tp_group = mesh.group("tp") if rules.get("expert_mlp") == "tp" else None
            cell.dispatch = ExpertDispatch(ep_group, ep, e_rank, e_rank * local, local, tp_group)
            cell.combine = ExpertCombine(ep_group, ep, e_rank, tp_group)
            cell.num_experts = local
        elif isinstance(cell, MoEStats) and stats_group is not None:
            cell.reduce = ops.AllReduce(ops.ReduceOp.SUM, stats_group)
        elif isinstance(cell, Embedding) and rules.get("vocab") == "tp":
            rows = cell.weight.shape[0] // tp
            replaced[id(cell)] = VocabParallelEmbedding(cell.weight, t_rank * rows, rows, mesh.group("tp"))
    if rules.get("vocab") == "tp" and hasattr(model, "cross_entropy"):
        model.cross_entropy = VocabParallelCrossEntropy(t_rank * (cfg.vocab_size // tp), mesh.group("tp"), tp, t_rank)
    for _, cell in list(model.cells_and_names()):           # every reference to a replaced cell
        for attr, child in list(cell.name_cells().items()):
            if id(child) in replaced:
                setattr(cell, attr, replaced[id(child)])
    owners = {}                                            # name -> (cell holding it, attribute)
    for cell_name, cell in model.cells_and_names():
        for attr, p in cell.parameters_and_names(expand=False):
            owners[f"{cell_name}.{attr}" if cell_name else attr] = (cell, attr)
    for name, p in params.items():                         # this rank's slices, new Parameters, same names
        if name in plan.cuts:                              # (set_data to a smaller shape is not safe in a graph)
            local = Parameter(Tensor(plan.local(name, p.asnumpy())), name=name, requires_grad=p.requires_grad)
            local.logical_axes = p.logical_axes
            cell, attr = owners[name]
            setattr(cell, attr, local)
    for name, p in model.parameters_and_names():
        p.name = name
    if ep > 1:
        plan.dispatcher = "all-gather"
    layout = ", ".join(f"{k}={v}" for k, v in (("dp", mesh.dp), ("ep", ep), ("tp", tp)) if v > 1) or "replicated"
    sharded = sum(1 for n in plan.cuts)
    log(f"parallel: {arch} on {mesh.world} rank(s) ({layout}); {sharded} of {len(params)} parameters sharded"
        + (f"; expert dispatch: {plan.dispatcher} (AllGather + AllReduce; AlltoAll / ReduceScatter have no CPU "
           "kernel)" if ep > 1 else "")
        + (f"; routing statistics over {'all data ranks' if stats_group == mesh.group('data') else 'the EP group'}"
           if stats_group is not None else ""))
    return plan


@dataclass(frozen=True)
class _Info:
    name: str
    shape: tuple
    axes: tuple


def local_bytes(model) -> int:
    """Bytes of this rank's parameters (fp32)."""
    return sum(4 * math.prod(p.shape) for p in model.get_parameters())


# ----------------------------------------------------------------------------- what the trainer needs
class GradientSync(nn.Cell):
    """Sum each gradient over the ranks holding replicas of its parameter: the data group (dp x ep ranks
    at this tp index) for everything but the routed experts, the expert_data group (dp ranks) for them."""

    def __init__(self, plan: ParallelPlan, names):
        super().__init__()
        data, expert = plan.mesh.group("data"), plan.mesh.group("expert_data")
        self.data = ops.AllReduce(ops.ReduceOp.SUM, data) if data else None
        self.expert = ops.AllReduce(ops.ReduceOp.SUM, expert) if expert else None
        self.is_expert = tuple(plan.is_expert(n) for n in names)

    def construct(self, grads):
        out = []
        for i in range(len(grads)):
            g = grads[i]
            if self.is_expert[i]:
                if self.expert is not None:
                    g = self.expert(g)
            elif self.data is not None:
                g = self.data(g)
            out.append(g)
        return tuple(out)


class SquareSum(nn.Cell):
    """The global sum of squares of (synced) gradients: a slice held by tp / ep ranks is added over that
    group, a replicated tensor counted once, so every rank gets the single-process number."""

    def __init__(self, plan: ParallelPlan, names, impl: str):
        super().__init__()
        tp, ep = plan.mesh.group("tp"), plan.mesh.group("ep")
        self.tp = ops.AllReduce(ops.ReduceOp.SUM, tp) if tp else None
        self.ep = ops.AllReduce(ops.ReduceOp.SUM, ep) if ep else None
        axes = [{axis for _, axis in plan.cut(n)} for n in names]
        self.over_tp = tuple("tp" in a for a in axes)
        self.over_ep = tuple("ep" in a for a in axes)
        self.impl = impl                      # ops.adamw.sum_squares impl (the optimiser's one-pass kernel)

    def construct(self, grads):
        parts = [ops.zeros((), ms.float32) for _ in range(4)]   # replicated, tp, ep, tp and ep
        for i in range(len(grads)):
            k = int(self.over_tp[i]) + 2 * int(self.over_ep[i])
            parts[k] = parts[k] + adamw_ops.sum_squares(grads[i], self.impl)
        total = parts[0]
        if self.tp is not None:
            parts[1] = self.tp(parts[1])
            parts[3] = self.tp(parts[3])
        if self.ep is not None:
            parts[2] = self.ep(parts[2])
            parts[3] = self.ep(parts[3])
        return total + parts[1] + parts[2] + parts[3]


class FullTensors:
    """Full tensors of sharded parameters for a checkpoint: each cut dimension is gathered over its group
    (tp, then ep). All tensors of a group travel in ONE flat AllGather: collectives without data
    dependencies inside one graph may run in a different order on different ranks, which would pair
    different tensors of the same shape."""

    def __init__(self, plan: ParallelPlan):
        self.plan = plan
        self._gathers = {}
        _, e, t = plan.mesh.coords
        for axis, size, rank in (("tp", plan.mesh.tp, t), ("ep", plan.mesh.ep, e)):
            group = plan.mesh.group(axis)
            if group is not None:
                self._gathers[axis] = ms.jit(AllGatherRows(group, size, rank))

    def __call__(self, named: dict) -> dict:
        """{name: local numpy} -> {name: full numpy}; `name` may carry an optimiser prefix (adam_m.)."""
        out = dict(named)
        for axis in ("tp", "ep"):
            todo = [(n, d) for n in out for d, a in self.plan.cut(n) if a == axis]
            if not todo:
                continue
            parts = self.plan.mesh.tp if axis == "tp" else self.plan.mesh.ep
            moved = [np.moveaxis(np.asarray(out[n], np.float32), d, 0) for n, d in todo]
            flat = np.concatenate([m.reshape(-1) for m in moved])
            every = self._gathers[axis](Tensor(flat)).asnumpy().reshape(parts, flat.size)
            offset = 0
            for (n, d), m in zip(todo, moved):
                chunks = every[:, offset:offset + m.size].reshape((parts,) + m.shape)
                out[n] = np.ascontiguousarray(np.concatenate([np.moveaxis(c, 0, d) for c in chunks], axis=d))
                offset += m.size
        return out


def base_name(name: str) -> str:
    """The parameter an optimiser state tensor belongs to (adam_m.X / adam_v.X -> X)."""
    for prefix in ("adam_m.", "adam_v."):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name
