"""The training loop: compiled (GRAPH mode) gradient and update steps, logging, checkpoints, resume.

One optimiser step = `grad_accum_steps` calls of the compiled gradient step (gradients summed, then
averaged) + one call of the compiled update step (global-norm clip + AdamW). The two are separate
graphs so that a non-finite loss or gradient norm can skip the update without touching the weights.

Everything that decides the numbers — model init, data order, learning rate — is a function of the
seed and the step, so `--resume` from a checkpoint reproduces the uninterrupted run's losses exactly.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass

import numpy as np

from recipes.io import checkpoint as ckpt_lib
from recipes.io import rundir
from recipes.io.hf import HF_SOURCE
from recipes.engine.config import ConfigError, RecipeConfig, dump_yaml, to_dict
from recipes.engine.guard import StepGuard, TrainingDiverged
from recipes.data import BATCH_KEYS  # the order of model.loss's arguments


@dataclass
class RunResult:
    run_dir: str
    steps_done: int
    first_loss: float
    final_loss: float
    val_loss: float | None


def run_dir_of(recipe: RecipeConfig) -> str:
    return os.path.join(recipe.run.root, recipe.run.name)


def configure_mindspore(recipe: RecipeConfig) -> str:
    """Set mode and device; return the device target actually used."""
    import mindspore as ms

    device = recipe.train.device
    if device == "auto":
        device = "Ascend" if os.environ.get("ASCEND_HOME_PATH") else "CPU"
    if recipe.train.dtype == "bfloat16" and device != "Ascend":
        raise ConfigError("train.dtype: bfloat16 matmuls need Ascend (no CPU kernel); use train.dtype=float32 on CPU")
    if ms.get_context("device_target") != device:  # set once per process; MindSpore refuses a change later
        ms.set_device(device)
    ms.set_context(mode=ms.GRAPH_MODE if recipe.train.mode == "graph" else ms.PYNATIVE_MODE)
    return device


def init_data_parallel() -> tuple[int, int]:
    """(rank, world size): under `msrun` initialise communication; a plain process is (0, 1).

    msrun starts the script in a scheduler process too (MS_ROLE=MS_SCHED): its `init()` serves the
    cluster and does not return to train.
    """
    if os.environ.get("MS_ROLE") not in ("MS_WORKER", "MS_SCHED"):
        return 0, 1
    from mindspore.communication import get_group_size, get_rank, init

    init()
    return get_rank(), get_group_size()


class Trainer:
    """Owns the model, optimiser, data stream and run directory of one recipe run."""

    def __init__(self, recipe: RecipeConfig, model_cfg, resume: bool = False, log=print):
        import mindspore as ms

        import models
        from recipes.data import build_dataset
        from recipes.engine.optim import AdamW

        self.recipe = recipe
        self.log = log
        self.run_dir = run_dir_of(recipe)
        rundir.check_not_foreign(self.run_dir)   # before any work: never write into someone else's directory
        self.ckpt_root = os.path.join(self.run_dir, "checkpoints")
        self.device = configure_mindspore(recipe)
        # Data parallel: every rank reads the same global batch of micro_batch_size * world rows and
        # trains on its slice; gradients are summed across ranks (AllReduce) before the update.
        self.rank, self.world = init_data_parallel()
        self.is_main = self.rank == 0
        self.model_cfg_in = model_cfg
        self.strategy = self._check_strategy()

        # An arch may bring its own data (MindVL: multimodal rows) and validation metrics (its ModelSpec).
        self.spec = models.get_spec(recipe.model.arch)
        build_data = self.spec.build_dataset or build_dataset
        self.train_data = build_data(recipe.data, split="train")
        self.val_data = build_data(recipe.data, split="val")
        model_cfg = self._fit_vocab(model_cfg, self.train_data.tokenizer.vocab_size)
        if recipe.train.dtype != getattr(model_cfg, "compute_dtype", recipe.train.dtype):
            model_cfg = dataclasses.replace(model_cfg, compute_dtype=recipe.train.dtype)
        self.model_cfg = model_cfg
        self.fingerprint = self._fingerprint()
        self._warn_if_unexportable(model_cfg)

        ms.set_seed(recipe.train.seed)
        np.random.seed(recipe.train.seed)
        self.model = self.spec.build(model_cfg, seed=recipe.train.seed)
        # Several processes: every rank built the same full model; it now keeps its own shards
        # (parallel_strategies.parallelize) and trains on its own rows of each global batch.
        self.plan = None
        self.data_rank, self.data_world = 0, 1
        if self.world > 1:
            self._parallelize(model_cfg)
        self.metric_names = tuple(type(self.model).METRIC_NAMES)
        # model.loss's arguments = these batch fields, in order (text models: the batch contract's five).
        # Every field has the row as its first dim (MindVL pads patches per row), so `batch[k][mine]`
        # slices any of them for data parallelism.
        self.batch_keys = tuple(getattr(self.model, "BATCH_KEYS", BATCH_KEYS))
        frozen = self._apply_freeze(recipe.train.freeze)
        self.params = [p for p in self.model.get_parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError("train.freeze: every parameter is frozen; loosen the patterns")
        self.optimizer = AdamW(self.params, recipe.optimizer)
        if self.plan is not None and self.is_main:
            self.log(self._memory_line())
        self.step = 0
        self.data_position = 0
        self.guard = StepGuard(recipe.train.max_bad_steps, recipe.train.spike_threshold)

        self.lock = self._own_run_dir(resume)
        if resume and not ckpt_lib.list_checkpoints(self.ckpt_root) and os.path.isfile(
                os.path.join(self.run_dir, "config.yaml")):
            # Killed before its first checkpoint: starting over is the exact resume.
            self.log(f"--resume: {self.run_dir} has no checkpoint yet; starting it from step 0")
            resume = False
        if resume:
            self._resume()
        else:
            self._start_fresh(frozen)
        self._build_steps()

    # ------------------------------------------------------------------------------------------
    # Set-up

    def _check_strategy(self):
        """Load `parallel.strategy` and check it against the processes msrun started and the recipe; what
        the explicit plan cannot run is refused here, before any data or model is built."""
        path = self.recipe.parallel.strategy
        if not path:
            if self.world > 1:
                raise ConfigError(
                    f"parallel.strategy: {self.world} msrun workers but no strategy; pass "
                    "--set parallel.strategy=tiny_cpu_dp2 (or launch with `make launch`)"
                )
            return None
        from parallel_strategies.parallelize import check_supported
        from parallel_strategies.strategy import load_strategy

        try:
            strategy = load_strategy(path)
        except (ValueError, FileNotFoundError, OSError) as err:
            raise ConfigError(f"parallel.strategy: {err}") from None
        pc = strategy.parallel_config
        if strategy.world_size != self.world:
            raise ConfigError(
                f"parallel.strategy: {path} is for {strategy.world_size} devices but {self.world} process(es) "
                f"run; launch it with `make launch RECIPE=... STRATEGY={path}`"
            )
        if pc.micro_batch_size != self.recipe.train.micro_batch_size:
            raise ConfigError(
                f"parallel.strategy: {path} has micro_batch_size {pc.micro_batch_size} but the recipe's "
                f"train.micro_batch_size is {self.recipe.train.micro_batch_size} (rows per data-parallel rank); "
                "make them equal"
            )
        if pc.pipeline_stage == 1 and pc.micro_batch_num != 1:
            raise ConfigError(
                f"parallel.strategy: micro_batch_num {pc.micro_batch_num} counts pipeline micro-batches; with "
                "pipeline_stage 1 set it to 1 (gradient accumulation is train.grad_accum_steps)"
            )
        try:
            check_supported(self.recipe.model.arch, self.model_cfg_in, strategy)
        except ValueError as err:
            raise ConfigError(f"parallel.strategy: {path}: {err}") from None
        return strategy

    def _parallelize(self, model_cfg) -> None:
        from parallel_strategies.mesh import build_mesh
        from parallel_strategies.parallelize import FullTensors, parallelize

        pc = self.strategy.parallel_config
        mesh = build_mesh(pc.data_parallel // pc.expert_parallel, pc.expert_parallel, pc.model_parallel,
                          self.rank, self.world)
        if self.recipe.init_from:     # full tensors into the full model, before it is cut
            self._load_init(self.recipe.init_from)
        self.plan = parallelize(self.model, model_cfg, self.recipe.model.arch, self.strategy, mesh,
                                log=self.log if self.is_main else (lambda *_: None))
        self.full_tensors = FullTensors(self.plan)
        self.data_rank, self.data_world = mesh.data_rank, mesh.data_world

    def _memory_line(self) -> str:
        """Bytes of parameters and optimiser state this rank holds, against one process holding everything."""
        def size(params, full):
            return sum(p.itemsize * math.prod(self.plan.full_shape(p.name, tuple(p.shape)) if full else p.shape)
                       for p in params)
        params, state = list(self.model.get_parameters()), self.optimizer.state_parameters()
        mine, whole = size(params, False) + size(state, False), size(params, True) + size(state, True)
        return (f"memory: rank {self.rank} holds {size(params, False) / 2**20:.3f} MiB of parameters + "
                f"{size(state, False) / 2**20:.3f} MiB of optimiser state = {mine / whole:.1%} of one process's "
                f"{whole / 2**20:.3f} MiB")

    def _load_tensors(self, params: list, tensors: dict, what: str) -> None:
        """Full tensors (a checkpoint of any layout) into this rank's parameters (its slices when sharded)."""
        if self.plan is not None:
            ckpt_lib.check_compatible({p.name: self.plan.full_shape(p.name, tuple(p.shape)) for p in params},
                                      tensors, what)
            tensors = {p.name: self.plan.local(p.name, np.asarray(tensors[p.name])) for p in params}
        ckpt_lib.load_into({p.name: p for p in params}, tensors, what)

    def _save_tensors(self, params: list) -> dict:
        """{name: full numpy} of `params` (gathered over the tensor / expert groups when sharded)."""
        local = {p.name: p.asnumpy() for p in params}
        return self.full_tensors(local) if self.plan is not None else local

    def _warn_if_unexportable(self, model_cfg):
        """A config its serving layout cannot write (e.g. head_dim x heads != hidden for the Pro loaders) still
        trains; say so before the run, not only when `recipes.export` refuses it afterwards."""
        try:
            self.spec.serving.config_to_hf(model_cfg)
        except ValueError as err:
            if self.is_main:
                self.log(f"warning: this run will not export: {err}")

    def _fit_vocab(self, model_cfg, tokenizer_vocab: int):
        """The model's vocabulary follows the tokenizer unless the recipe set it explicitly."""
        if "vocab_size" in self.recipe.model.overrides:
            if model_cfg.vocab_size < tokenizer_vocab:
                raise ConfigError(
                    f"model.vocab_size: {model_cfg.vocab_size} is smaller than the tokenizer's {tokenizer_vocab}; "
                    f"remove the override or set it >= {tokenizer_vocab}"
                )
            return model_cfg
        return dataclasses.replace(model_cfg, vocab_size=tokenizer_vocab)

    def _fingerprint(self) -> dict:
        """The parts of the resolved config that must match for a resume to be exact."""
        cfg = to_dict(self.recipe, self.model_cfg)
        # parallel: a checkpoint holds full tensors, so a run resumes under another layout (TP2 -> DP2, ...)
        for volatile in ("train.steps", "checkpoint", "run", "description", "parallel", "train.eval_every",
                         "train.log_every",
                         "train.max_bad_steps", "train.spike_threshold"):
            node, *rest = volatile.split(".")
            if rest:
                cfg[node].pop(rest[0], None)
            else:
                cfg.pop(node, None)
        cfg["content"] = content_hashes(cfg.get("data", {}))   # an edited data file or tokenizer is another run
        return json.loads(json.dumps(cfg))  # as stored in trainer_state.json (tuples become lists)

    def _apply_freeze(self, patterns: list[str]) -> list[str]:
        frozen = []
        if not patterns:
            return frozen
        regexes = []
        for pattern in patterns:
            try:
                regexes.append(re.compile(pattern))
            except re.error as err:
                raise ConfigError(f"train.freeze: {pattern!r} is not a valid regular expression ({err})") from None
        for p in self.model.get_parameters():
            if any(r.search(p.name) for r in regexes):
                p.requires_grad = False
                frozen.append(p.name)
        unmatched = [pat for pat, r in zip(patterns, regexes) if not any(r.search(n) for n in frozen)]
        if unmatched:
            raise ConfigError(f"train.freeze: pattern {unmatched[0]!r} matches no parameter; check the parameter names")
        return frozen

    def _own_run_dir(self, resume: bool):
        """Rank 0 locks RUN/.lock for the life of this Trainer (under msrun the
        ranks of one job share the directory, so only rank 0 takes it). A --resume of a directory that
        was never created is left to _resume's error."""
        if not self.is_main or (resume and not os.path.isdir(self.run_dir)):
            return None
        lock = rundir.lock_run(self.run_dir)
        if lock.previous_owner:
            self.log(f"{self.run_dir}: taking over the stale lock of {lock.previous_owner} (no longer running)")
        return lock

    def _start_fresh(self, frozen: list[str]) -> None:
        existing = ckpt_lib.list_checkpoints(self.ckpt_root)
        if existing:
            raise ConfigError(
                f"run.name: {self.run_dir} already holds a run (checkpoint at step {existing[-1].step}); "
                "pass --resume to continue it, or --set run.name=<new name> for a new run"
            )
        os.makedirs(self.run_dir, exist_ok=True)
        if self.is_main:
            for name in ("metrics.jsonl", "loss.png"):
                if os.path.exists(os.path.join(self.run_dir, name)):
                    os.remove(os.path.join(self.run_dir, name))  # left by a run that never reached a checkpoint
            dump_yaml(self.recipe, self.model_cfg, os.path.join(self.run_dir, "config.yaml"))
        if self.recipe.init_from and self.plan is None:   # (a parallel run loaded it before cutting the model)
            self._load_init(self.recipe.init_from)
        if frozen:
            self.log(f"frozen: {len(frozen)} parameters (train.freeze)")

    def _load_init(self, path: str) -> None:
        source = ckpt_lib.resolve_init_from(path)
        tensors = ckpt_lib.load_tensors(source, ckpt_lib.MODEL_FILE)
        params = list(self.model.get_parameters())
        if self.spec.init_from_state is not None:   # an arch that starts from another's checkpoint (MindVL: an LLM)
            tensors = self.spec.init_from_state(self.model_cfg, tensors, {p.name: p for p in params}, self.log)
        self._load_tensors(params, tensors, f"init_from {source}")
        self.log(f"initialised from {source}")
        # a model imported from a serving directory keeps that directory's files across stages, so the
        # export of this run writes the source's config keys, special-token ids and tokenizer files
        imported = os.path.join(os.path.dirname(os.path.dirname(source)), HF_SOURCE)
        if self.is_main and os.path.isdir(imported):
            shutil.copytree(imported, os.path.join(self.run_dir, HF_SOURCE), dirs_exist_ok=True)

    def _resume(self) -> None:
        found = ckpt_lib.latest_valid(self.ckpt_root, warn=self.log)
        if found is None:
            raise ConfigError(
                f"--resume: no valid checkpoint under {self.ckpt_root}; start without --resume "
                "(or check run.root/run.name)"
            )
        state = ckpt_lib.verify(found.path)
        stored, current = state.get("fingerprint", {}), dict(self.fingerprint)
        if "content" not in stored:   # a checkpoint written before content hashes: compare the settings only
            current.pop("content", None)
        elif stored["content"] != current["content"]:
            key = _first_difference(stored["content"], current["content"])
            raise ConfigError(
                f"--resume: the content of data.{key} changed since the checkpoint (sha256 differs); resume on the "
                "files the run was trained on, or start a new run with init_from the checkpoint")
        if stored != current:
            key = _first_difference(stored, current)
            raise ConfigError(
                f"--resume: the recipe differs from the checkpointed run at {key}; resume with the same "
                "settings (only train.steps, checkpoint.* and logging may change)"
            )
        tensors = ckpt_lib.load_tensors(found.path, ckpt_lib.MODEL_FILE)
        self._load_tensors(list(self.model.get_parameters()), tensors, found.path)
        if not os.path.isfile(os.path.join(found.path, ckpt_lib.OPTIMIZER_FILE)):
            raise ConfigError(
                f"--resume: {found.path} has no optimizer state (checkpoint.save_optimizer was false); "
                "use init_from to start a new run from its weights"
            )
        opt_tensors = ckpt_lib.load_tensors(found.path, ckpt_lib.OPTIMIZER_FILE)
        self._load_tensors(self.optimizer.state_parameters(), opt_tensors, found.path)
        self.step = int(state["step"])
        if self.step > self.recipe.train.steps:
            raise ConfigError(
                f"--resume: {found.path} is at step {self.step} but train.steps is {self.recipe.train.steps}; "
                f"set train.steps above {self.step} to continue (or init_from it for a new run)")
        self.data_position = int(state["data_position"])
        self.guard.load_state_dict(state.get("guard", {}))
        if self.is_main:
            _truncate_metrics(os.path.join(self.run_dir, "metrics.jsonl"), self.step)
            dump_yaml(self.recipe, self.model_cfg, os.path.join(self.run_dir, "config.yaml"))
        self.log(f"resumed from {found.path} (step {self.step})")
        if self.step == self.recipe.train.steps:
            self.log(f"nothing to train: the run is complete at train.steps={self.step}; set train.steps above "
                     f"{self.step} to train further")

    def _build_steps(self) -> None:
        """Compile-once functions: forward+backward, gradient sum, clip+update, evaluation."""
        import mindspore as ms
        from mindspore import ops

        import ops.adamw as adamw_ops

        model, optimizer = self.model, self.optimizer
        clip = float(self.recipe.optimizer.grad_clip)
        sq_impl = optimizer.impl  # the optimiser's kernels also give the one-pass sum of squares
        plan = self.plan
        # Sums over the data-parallel ranks (each holds its own rows; tensor-parallel ranks of one data rank
        # see the same rows and are not added again): losses, metrics, expert loads, validation sums.
        data_group = plan.mesh.group("data") if plan is not None else None
        all_reduce = ops.AllReduce(ops.ReduceOp.SUM, data_group) if data_group else None
        self._sum_over_ranks = self._sum_over_world = None
        if all_reduce is not None:
            @ms.jit
            def sum_over_ranks(x):
                return all_reduce(x)

            # numpy in, numpy out (outside the step; used for the validation sums)
            self._sum_over_ranks = lambda a: sum_over_ranks(ms.Tensor(a)).asnumpy()
        if plan is not None:
            world_sum = ops.AllReduce()

            @ms.jit
            def sum_over_world(x):
                return world_sum(x)

            self._sum_over_world = lambda a: sum_over_world(ms.Tensor(a)).asnumpy()
        if plan is not None:   # gradients summed over each parameter's replicas; the norm over all shards
            from parallel_strategies.parallelize import GradientSync, SquareSum

            names = [p.name for p in optimizer.params]
            sync = GradientSync(plan, names)
            global_square_sum = SquareSum(plan, names, sq_impl)
        else:
            sync = global_square_sum = None

        # Aux-loss-free balancing (Ultra, router_bias_update_rate > 0) runs INSIDE the compiled steps: a
        # step zeroes the routers' load counters, loss() counts, and after the update the bias moves by
        # the loads summed over the data-parallel ranks (so every rank applies the same update).
        tracks_load = bool(getattr(model, "tracks_expert_load", False))

        def bias_step(applied):
            loads = model.expert_loads()
            if all_reduce is not None:
                loads = tuple([all_reduce(load) for load in loads])
            return model.update_expert_bias(loads, applied)

        # The batch tensors are passed as varargs (*batch = self.batch_keys in order; 5 for text models,
        # 14 for MindVL); ms.jit compiles varargs functions in GRAPH mode.
        def forward(*args):
            batch, weight = args[:-1], args[-1]
            loss, metrics = model.loss(*batch)
            return loss * weight, loss, metrics

        grad_fn = ms.value_and_grad(forward, None, optimizer.params, has_aux=True)

        def grad_step(*args):  # (*batch, weight)
            # weight = this micro-batch's share of the step's targets, so that accumulated gradients
            # are those of the token-weighted mean loss over the whole global batch.
            weight = args[-1]
            (_, loss, metrics), grads = grad_fn(*args)
            # Returned values are weighted by the share too and summed over ranks: the caller adds
            # them up over micro-batches to get the global batch's token-weighted means.
            loss = loss * weight
            metrics = tuple([m * weight for m in metrics])
            if all_reduce is not None:
                loss = all_reduce(loss)
                metrics = tuple([all_reduce(m) for m in metrics])
            return loss, metrics, grads

        def add_grads(acc, grads):
            return tuple([a + g for a, g in zip(acc, grads)])

        def sum_squares(grads):
            if global_square_sum is not None:
                return global_square_sum(grads)
            total = 0.0
            for g in grads:
                total = total + adamw_ops.sum_squares(g, sq_impl)
            return total

        def global_norm(grads):
            return ops.sqrt(sum_squares(grads))

        def update_step(grads, lr):
            if sync is not None:
                grads = sync(grads)
            norm = global_norm(grads)
            if clip > 0:
                factor = ops.minimum(1.0, clip / (norm + 1e-6))
                grads = tuple([g * factor for g in grads])
            optimizer(grads, lr)
            if tracks_load:
                bias_step(ops.ones((), ms.bool_))
            return norm

        def grad_norm(grads):
            if sync is not None:
                grads = sync(grads)
            return global_norm(grads)

        def grad_sq_sum(grads):
            # Finite iff every gradient on every rank is: the guard's check before an update. Only
            # scalars cross ranks (grad_norm would all-reduce every gradient).
            if plan is None:
                return sum_squares(grads)
            local = 0.0
            for g in grads:
                local = local + adamw_ops.sum_squares(g, sq_impl)
            return world_sum(local)

        def eval_step(*batch):
            loss, _ = model.loss(*batch)
            return loss

        def zero_loads():
            return model.zero_expert_loads()

        def copy_loads():   # a graph of its own: a copy read and a counter written in one graph can reorder
            return tuple([load * 1 for load in model.expert_loads()])

        def restore_loads(loads):
            return model.restore_expert_loads(loads)

        def fused_step(*args):  # (*batch, weight, lr)
            # grad_accum_steps == 1: forward+backward, the guard's finiteness check, clip and AdamW in
            # ONE graph (no gradient tuple crossing graph boundaries, one host sync per step). Same
            # numbers as grad_step + grad_sq_sum + update_step; a non-finite loss or gradient skips the
            # update inside the graph, exactly like the host-side guard of the unfused path.
            # (grad_fn is called directly: GRAPH mode does not resolve the varargs closure grad_step here)
            if tracks_load:
                model.zero_expert_loads()
            weight, lr = args[-2], args[-1]
            (_, loss, metrics), grads = grad_fn(*args[:-1])
            loss = loss * weight
            metrics = tuple([m * weight for m in metrics])
            if all_reduce is not None:
                loss = all_reduce(loss)
                metrics = tuple([all_reduce(m) for m in metrics])
            if sync is not None:
                grads = sync(grads)
            sq = sum_squares(grads)
            norm = ops.sqrt(sq)
            applied = ops.logical_and(ops.isfinite(loss), ops.isfinite(sq))
            factor = ops.minimum(1.0, clip / (norm + 1e-6)) if clip > 0 else ops.ones((), ms.float32)
            optimizer.update_if(applied, grads, lr, factor)
            if tracks_load:
                bias_step(applied)
            return loss, metrics, norm, applied

        jit = ms.jit if self.recipe.train.mode == "graph" else (lambda f: f)
        self.fused = self.recipe.train.grad_accum_steps == 1
        self._fused_step = jit(fused_step)
        self._grad_step = jit(grad_step)
        self._add_grads = jit(add_grads)
        self._update_step = jit(update_step)
        self._grad_norm = jit(grad_norm)
        self._grad_sq_sum = jit(grad_sq_sum)
        self._eval_step = jit(eval_step)
        # evaluation batches pass through loss() too: evaluate() puts the training step's counts back
        self._zero_loads = jit(zero_loads) if tracks_load else None
        self._copy_loads = jit(copy_loads) if tracks_load else None
        self._restore_loads = jit(restore_loads) if tracks_load else None

    # ------------------------------------------------------------------------------------------
    # The loop

    def train(self) -> RunResult:
        import mindspore as ms
        from tqdm import tqdm

        from recipes.engine.optim import learning_rate

        recipe = self.recipe
        total = recipe.train.steps
        metrics_path = os.path.join(self.run_dir, "metrics.jsonl")
        batch_size = recipe.train.micro_batch_size
        tokens_per_step = batch_size * self.data_world * recipe.train.grad_accum_steps * recipe.data.seq_length
        global_rows = batch_size * self.data_world
        stream = self.train_data.batches(global_rows, start=self.data_position, seed=recipe.train.seed)
        mine = slice(self.data_rank * batch_size, (self.data_rank + 1) * batch_size)
        first_loss = last_loss = float("nan")
        val_loss = None
        bar = tqdm(total=total, initial=self.step, desc=recipe.run.name, unit="step", dynamic_ncols=True,
                   disable=not self.is_main)
        with open(metrics_path if self.is_main else os.devnull, "a") as metrics_file:  # rank 0 logs
            while self.step < total:
                t0 = time.perf_counter()
                lr = learning_rate(self.step, total, recipe.optimizer, recipe.schedule)
                micro_batches = [next(stream) for _ in range(recipe.train.grad_accum_steps)]
                self.data_position += global_rows * len(micro_batches)
                # Each (rank, micro-batch) slice weighs by its share of the global batch's targets.
                shares = _target_shares([b["loss_mask"] for b in micro_batches], mine)
                loss_value, metric_values, norm, applied = self.optimizer_step(micro_batches, shares, lr, mine)
                self.step += 1
                elapsed = time.perf_counter() - t0
                record = {"step": self.step, "loss": loss_value, "lr": lr, "grad_norm": norm}
                record.update({n: float(v) for n, v in zip(self.metric_names, metric_values)})
                record["tokens"] = self.step * tokens_per_step
                record["tokens_per_s"] = tokens_per_step / elapsed
                guard_fields, warning = self.guard.observe(self.step, loss_value, norm, applied)
                record.update(guard_fields)
                if warning and self.is_main:
                    bar.write(warning)
                if applied:
                    if math.isnan(first_loss):
                        first_loss = loss_value
                    last_loss = loss_value
                evaluate = (recipe.train.eval_every and self.step % recipe.train.eval_every == 0) or self.step == total
                if evaluate:
                    saved = self._copy_loads() if self._copy_loads is not None else None
                    val_loss = self.evaluate()
                    record["val_loss"] = val_loss
                    if self.spec.evaluate is not None:  # the arch's own validation metrics (MindVL: accuracy)
                        self.val_metrics = {k: float(v) for k, v in self.spec.evaluate(self.model, self.val_data).items()}
                        record.update(self.val_metrics)
                        if self.is_main:
                            bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.3f}" for k, v in self.val_metrics.items()))
                    if saved is not None:   # evaluation batches counted expert loads too: keep the step's
                        self._restore_loads(ms.mutable(saved))
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                bar.update(1)
                if self.step % recipe.train.log_every == 0 or self.step == total:
                    bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
                every = recipe.checkpoint.every
                saved = None
                if (every and self.step % every == 0) or self.step == total:
                    saved = self.save_checkpoint()
                if self.guard.should_stop:
                    saved = saved or self.save_checkpoint() or self.ckpt_root  # weights = last good step
                    bar.close()
                    raise TrainingDiverged(self.guard.stop_message(self.step, saved))
        bar.close()
        if self.is_main:
            plot_losses(metrics_path, os.path.join(self.run_dir, "loss.png"), title=recipe.run.name)
        return RunResult(self.run_dir, self.step, first_loss, last_loss, val_loss)

    def optimizer_step(self, micro_batches, shares, lr: float, mine: slice = slice(None)):
        """One optimiser step on `micro_batches` (this rank's rows `mine`, target `shares`).

        Returns (loss, metric values, grad norm, applied) as host numbers; `applied` is False when the
        guard skipped the update (non-finite loss or gradient). `make bench` times exactly this call.
        """
        import mindspore as ms
        from mindspore import Tensor

        if self.fused and len(micro_batches) == 1:
            inputs = [Tensor(micro_batches[0][k][mine]) for k in self.batch_keys]
            loss, metrics, norm, applied = self._fused_step(
                *inputs, Tensor(shares[0], ms.float32), Tensor(lr, ms.float32))
            return (float(loss.asnumpy()), np.array([float(m.asnumpy()) for m in metrics]),
                    float(norm.asnumpy()), bool(applied.asnumpy()))
        loss_value, metric_values, grads = 0.0, np.zeros(len(self.metric_names)), None
        if self._zero_loads is not None:
            self._zero_loads()
        for batch, share in zip(micro_batches, shares):
            inputs = [Tensor(batch[k][mine]) for k in self.batch_keys] + [Tensor(share, ms.float32)]
            loss, metrics, micro_grads = self._grad_step(*inputs)
            grads = micro_grads if grads is None else self._add_grads(ms.mutable(grads), ms.mutable(micro_grads))
            loss_value += float(loss.asnumpy())
            metric_values += np.array([float(m.asnumpy()) for m in metrics])
        # The guard: a non-finite loss or gradient skips the update (weights stay those of the
        # last good step). mutable: a tuple argument is otherwise a compile-time constant.
        applied = StepGuard.finite(loss_value) and StepGuard.finite(
            float(self._grad_sq_sum(ms.mutable(grads)).asnumpy()))
        if applied:
            norm = float(self._update_step(ms.mutable(grads), Tensor(lr, ms.float32)).asnumpy())
        else:
            norm = float(self._grad_norm(ms.mutable(grads)).asnumpy())
        return loss_value, metric_values, norm, applied

    def evaluate(self) -> float:
        """Mean token loss over the first `train.eval_batches` global batches of the validation split
        (micro_batch_size rows per rank, like training: each data-parallel rank evaluates its slice
        and the sums are added over ranks, so every rank returns the single-process number)."""
        from mindspore import Tensor

        rows = self.recipe.train.micro_batch_size
        mine = slice(self.data_rank * rows, (self.data_rank + 1) * rows)
        total = count = 0.0
        for batch in self.val_data.eval_batches(rows * self.data_world, self.recipe.train.eval_batches):
            targets = float(batch["loss_mask"][mine].sum())
            if targets:
                loss = self._eval_step(*(Tensor(batch[k][mine]) for k in self.batch_keys))
                total += targets * float(loss.asnumpy())
                count += targets
        if self._sum_over_ranks is not None:
            total, count = (float(v) for v in self._sum_over_ranks(np.array([total, count], np.float32)))
        return total / max(count, 1.0)

    def save_checkpoint(self) -> str | None:
        """Full tensors under the single-process names whatever the layout: every rank takes part in the
        gathers, rank 0 writes, and every rank then checks its own slices against the written files."""
        model = self._save_tensors(list(self.model.get_parameters()))
        optimizer = (self._save_tensors(self.optimizer.state_parameters())
                     if self.recipe.checkpoint.save_optimizer else None)
        if self.plan is not None:
            path = self._save_main(model, optimizer) if self.is_main else None
            self._barrier()
            self._verify_own_slices(os.path.join(self.ckpt_root, ckpt_lib.step_dir_name(self.step)))
            return path
        return self._save_main(model, optimizer)

    def _barrier(self) -> None:
        self._sum_over_world(np.zeros(1, np.float32))

    def _verify_own_slices(self, path: str) -> None:
        written = ckpt_lib.load_tensors(path, ckpt_lib.MODEL_FILE)
        for p in self.model.get_parameters():
            if not np.array_equal(self.plan.local(p.name, written[p.name]), p.asnumpy()):
                raise ckpt_lib.CheckpointError(f"{path}: {p.name} on rank {self.rank} differs from the written "
                                               "checkpoint; the gather or the file is wrong, do not use this step")

    def _save_main(self, model: dict, optimizer: dict | None) -> str | None:
        if not self.is_main:  # data-parallel replicas are identical: rank 0 writes the checkpoint
            return None
        state = {
            "step": self.step,
            "data_position": self.data_position,
            "seed": self.recipe.train.seed,
            "fingerprint": self.fingerprint,
            "guard": self.guard.state_dict(),
        }
        return ckpt_lib.save(self.ckpt_root, self.step, model, optimizer, state, self.recipe.checkpoint.keep_last)


def _target_shares(loss_masks: list[np.ndarray], mine: slice) -> np.ndarray:
    """This rank's share of the global batch's targets, per micro-batch (sums to 1 over ranks)."""
    total = sum(float(m.sum()) for m in loss_masks)
    if total == 0:  # no targets at all: weigh slices equally so the step is still well defined
        rows = sum(m.shape[0] for m in loss_masks)
        return np.array([m[mine].shape[0] / rows for m in loss_masks])
    return np.array([float(m[mine].sum()) / total for m in loss_masks])


def _truncate_metrics(path: str, step: int) -> None:
    """Drop log lines past the checkpoint being resumed: those steps will run again."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError):
            break  # a line cut by the kill: everything after it is gone too
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


CONTENT_KEYS = ("path", "paths", "val_paths", "tokenizer_model", "tokenizer_json")  # data files a recipe names


def content_hashes(data: dict) -> dict:
    """sha256 of every data file and tokenizer the data section names ({key or key[i]: hex}); a shard given
    as a path prefix is its files PREFIX.* (e.g. .bin + .idx). Paths resolve like the data loader's."""
    out = {}
    for key in CONTENT_KEYS:
        value = data.get(key)
        paths = [value] if isinstance(value, str) else list(value or ())
        for i, path in enumerate(paths):
            if not path:
                continue
            files = [path] if os.path.isfile(path) else sorted(glob.glob(glob.escape(path) + ".*"))
            digest = hashlib.sha256()
            for name in files:
                with open(name, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        digest.update(block)
            out[key if isinstance(value, str) else f"{key}[{i}]"] = digest.hexdigest()
    return out


def _first_difference(a, b, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "(root)"


def plot_losses(metrics_path: str, png_path: str, title: str) -> None:
    """Loss curve (training loss per step and validation points) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    if not records:
        return
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss"] for r in records], label="train loss", linewidth=1)
    if "lm_loss" in records[0]:
        ax.plot(steps, [r["lm_loss"] for r in records], label="lm loss", linewidth=1, alpha=0.7)
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if val:
        ax.plot(*zip(*val), "o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png_path)
