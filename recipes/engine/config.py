"""Typed recipe configuration: dataclasses, YAML inheritance and type-checked overrides.

A recipe YAML names a `base:` file (resolved relative to itself) and overrides only what differs;
`--set a.b=c` overrides come last. Everything is checked against the dataclasses below (and the model
architecture's own config dataclass), and every problem stops with ONE line naming the key, the
problem and the closest valid keys (`ConfigError`). YAML is read with `yaml.safe_load` only.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml

from recipes.data.config import DataConfig


class ConfigError(ValueError):
    """A user error in a recipe or an override; its message is one line that says how to fix it."""


@dataclass
class ModelSection:
    """Which architecture and preset to build; other keys override fields of its config dataclass."""

    arch: str = "pangu_pro_moe"  # architecture name in the registry (models.SPECS)
    preset: str = "tiny"  # preset of that architecture: tiny | bench | full
    overrides: dict = field(default_factory=dict)  # field -> value, checked against the arch config


@dataclass
class OptimizerConfig:
    """AdamW with decoupled weight decay, the Pangu family's pre-training optimiser."""

    lr: float = 3e-4  # peak learning rate
    beta1: float = 0.9  # first-moment decay
    beta2: float = 0.95  # second-moment decay
    eps: float = 1e-8  # denominator epsilon
    weight_decay: float = 0.1  # decoupled decay on matrices (not on norms, biases or router scales)
    grad_clip: float = 1.0  # clip the global gradient norm to this value; 0 disables clipping
    impl: Literal["auto", "reference", "fast", "ascend"] = "auto"  # update kernel (ops.adamw): auto = one-pass CPU kernel when built


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: linear warm-up then decay to `min_lr` at the last step."""

    warmup_steps: Optional[int] = None  # linear warm-up steps from lr/warmup to lr (None: warmup_fraction)
    warmup_fraction: float = 0.1  # warm-up as a fraction of train.steps when warmup_steps is unset
    decay: Literal["cosine", "linear", "constant"] = "cosine"  # shape of the decay after warm-up
    min_lr: float = 3e-5  # learning rate reached at the final step

    def warmup(self, total_steps: int) -> int:
        """Warm-up steps of a run of `total_steps`: warmup_steps, else round(warmup_fraction * total_steps)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(round(self.warmup_fraction * total_steps))


@dataclass
class TrainConfig:
    """The training loop."""

    steps: int = 300  # optimiser steps
    micro_batch_size: int = 16  # sequences per micro-batch
    grad_accum_steps: int = 1  # micro-batches accumulated per optimiser step
    seed: int = 1234  # seeds model init and data order; a run is deterministic under it
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype (bfloat16 needs Ascend)
    device: Literal["auto", "CPU", "Ascend"] = "auto"  # auto: Ascend when available, else CPU
    mode: Literal["graph", "pynative"] = "graph"  # graph compiles the train step (~16x faster)
    log_every: int = 1  # metrics.jsonl gets every step; the progress bar refreshes this often
    eval_every: int = 0  # validation loss every N steps (0: only at the end)
    eval_batches: int = 4  # micro-batches of the validation split per evaluation
    freeze: list[str] = field(default_factory=list)  # regexes of parameter names kept frozen
    max_bad_steps: int = 5  # this many consecutive non-finite steps (each one skipped) stop the run
    spike_threshold: float = 3.0  # warn when the loss exceeds this x its running mean; 0 disables


@dataclass
class CheckpointConfig:
    """Checkpoints: safetensors weights + optimizer state, JSON trainer state, sha256 manifest."""

    every: int = 100  # save every N steps (and always at the last step); 0: only at the end
    keep_last: int = 2  # how many checkpoints to keep (the newest valid one is never deleted)
    save_optimizer: bool = True  # also save AdamW moments (needed for exact --resume)


@dataclass
class RunConfig:
    """Where the run's files go."""

    root: str = "runs"  # parent directory of run directories (relative to the working directory)
    name: str = ""  # run directory name; empty: <recipe name>


@dataclass
class ParallelSection:
    """How the run is spread over devices (see parallel_strategies/ and docs/parallel_strategies.md)."""

    strategy: str = ""  # strategy file (path or name under parallel_strategies/strategies/); empty: one process


@dataclass
class RecipeConfig:
    """A whole recipe: model, data, optimiser, schedule, loop, checkpoints, run directory."""

    description: str = ""  # one line shown at start
    init_from: Optional[str] = None  # checkpoint dir or run dir of a previous stage to start from
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run: RunConfig = field(default_factory=RunConfig)
    parallel: ParallelSection = field(default_factory=ParallelSection)


# --------------------------------------------------------------------------------------------------
# Loading


def load_recipe(path: str, overrides: list[str] | tuple[str, ...] = ()) -> tuple[RecipeConfig, Any]:
    """Read a recipe (following `base:`), apply `key=value` overrides, type-check and validate.

    Returns the recipe and the resolved model config dataclass.
    """
    raw = _read_with_bases(path, seen=())
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value)
    name = os.path.splitext(os.path.basename(path))[0]
    return resolve(raw, default_run_name=name)


def resolve(raw: dict, default_run_name: str = "run") -> tuple[RecipeConfig, Any]:
    """Turn a merged recipe dict into checked dataclasses (recipe, model config)."""
    raw = dict(raw)
    model_raw = raw.pop("model", {}) or {}
    if not isinstance(model_raw, dict):
        raise ConfigError(f"model: expected a mapping of model keys, got {_show(model_raw)}")
    model_raw = dict(model_raw)
    arch = _check_type(model_raw.get("arch", "pangu_pro_moe"), str, "model.arch")
    # An arch may bring its own `data:` dataclass (MindVL: multimodal rows); the text pipeline's otherwise.
    data_cls = _data_config_class(arch)
    data_raw = raw.pop("data", None)
    recipe = _build(RecipeConfig, {**raw, "model": {}}, "")
    recipe.data = _build(data_cls, data_raw if data_raw is not None else {}, "data.")
    recipe.model = ModelSection(
        arch=_check_type(model_raw.pop("arch", "pangu_pro_moe"), str, "model.arch"),
        preset=_check_type(model_raw.pop("preset", "tiny"), str, "model.preset"),
        overrides=model_raw,
    )
    if not recipe.run.name:
        recipe.run.name = default_run_name
    model_cfg = build_model_config(recipe.model)
    _validate_recipe(recipe, model_cfg)
    return recipe, model_cfg


def _data_config_class(arch: str):
    """The dataclass of the `data:` section: the arch spec's `data_config_cls`, else DataConfig."""
    import models

    if arch not in models.SPECS:
        return DataConfig  # build_model_config names the unknown arch
    return models.get_spec(arch).data_config_cls or DataConfig


def build_model_config(section: ModelSection):
    """The arch's preset config with `section.overrides` applied field by field, then validated."""
    import models

    archs = models.arch_names()
    if section.arch not in archs:
        raise ConfigError(f"model.arch: unknown architecture {section.arch!r}; {_closest(section.arch, archs)}")
    spec = models.get_spec(section.arch)
    if section.preset not in spec.presets:
        raise ConfigError(f"model.preset: unknown preset {section.preset!r} for {section.arch}; "
                          f"{_closest(section.preset, list(spec.presets))}")
    base = spec.config(section.preset)
    cfg = _build(type(base), section.overrides, "model.", defaults=base)
    try:
        cfg.validate()
    except ValueError as err:
        raise ConfigError(f"model.{err}") from None
    return cfg


def to_dict(recipe: RecipeConfig, model_cfg) -> dict:
    """The fully resolved recipe as plain data (what a run directory stores as config.yaml)."""
    out = dataclasses.asdict(recipe)
    out["model"] = {"arch": recipe.model.arch, "preset": recipe.model.preset, **dataclasses.asdict(model_cfg)}
    return out


def dump_yaml(recipe: RecipeConfig, model_cfg, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(recipe, model_cfg), f, sort_keys=False)


# --------------------------------------------------------------------------------------------------
# Internals


def _read_with_bases(path: str, seen: tuple[str, ...]) -> dict:
    real = os.path.realpath(path)
    if real in seen:
        chain = " -> ".join(seen + (real,))
        raise ConfigError(f"{path}: base: inheritance cycle ({chain}); remove one of the base: keys")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: recipe file not found; check the path (recipes live under recipes/<model>/)")
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else path
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{where}: invalid YAML ({problem}); fix the syntax on that line") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping of sections, got {_show(data)}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a file path, got {_show(base)}")
    base_path = os.path.join(os.path.dirname(path), base)
    if not os.path.isfile(base_path):
        raise ConfigError(f"{path}: base: {base_path} not found; base paths are relative to the recipe file")
    return _deep_merge(_read_with_bases(base_path, seen + (real,)), data)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected key=value (e.g. --set train.steps=50)")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item}: empty key; write a dotted key such as train.steps=50")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text  # left as a string; the type check names the problem if a string is wrong here
    return key, value


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"--set {key}: {where} is a value, not a section; set {where}=... directly")
        node = child
    node[parts[-1]] = value


def _build(cls, data: dict, prefix: str, defaults=None):
    """Instantiate dataclass `cls` from `data`, checking every key and type (recursively)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'recipe'}: expected a mapping, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in fields:
            valid = list(fields)
            raise ConfigError(
                f"{prefix}{key}: unknown key; {_closest(key, valid, prefix)}"
            )
        ftype = hints[key]
        if dataclasses.is_dataclass(ftype):
            base = getattr(defaults, key) if defaults is not None else None
            values[key] = _build(ftype, value if value is not None else {}, f"{prefix}{key}.", base)
        else:
            values[key] = _check_type(value, ftype, f"{prefix}{key}")
    if defaults is not None:
        return dataclasses.replace(defaults, **values)
    return cls(**values)


def _check_type(value: Any, ftype: Any, key: str) -> Any:
    """Return `value` converted to `ftype` (int -> float, list -> tuple) or raise a one-line error."""
    origin = typing.get_origin(ftype)
    args = typing.get_args(ftype)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {_show(value)} matches none of {_type_name(ftype)}")
    if origin is Literal:
        if value in args:
            return value
        near = difflib.get_close_matches(str(value), [str(a) for a in args], n=1, cutoff=0.5)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}{hint}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_show(value)}; e.g. {key}=[1,2]")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        item_types = args[:1] * len(value) if (origin is list or (args and args[-1] is Ellipsis)) else args
        items = [_check_type(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_types or [Any] * len(value)))]
        return tuple(items) if origin is tuple else items
    if ftype in (tuple, list):  # unparameterised (e.g. MindVL's `fullatt_block_indexes: tuple`)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_show(value)}; e.g. {key}=[1,2]")
        return ftype(value)
    if ftype is Any:
        return value
    if ftype is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {_show(value)}")
    if ftype is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {_show(value)}")
    if ftype is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {_show(value)}")
    if ftype is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {_show(value)}")
    if ftype is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{key}: expected a mapping, got {_show(value)}")
    raise AssertionError(f"unsupported config field type {ftype!r} for {key}")


def _validate_recipe(recipe: RecipeConfig, model_cfg) -> None:
    """Cross-field checks that no single dataclass can make."""
    checks = [
        (recipe.train.steps >= 1, "train.steps", f"{recipe.train.steps} must be >= 1"),
        (recipe.train.micro_batch_size >= 1, "train.micro_batch_size", f"{recipe.train.micro_batch_size} must be >= 1"),
        (recipe.train.grad_accum_steps >= 1, "train.grad_accum_steps", f"{recipe.train.grad_accum_steps} must be >= 1"),
        (recipe.train.log_every >= 1, "train.log_every", f"{recipe.train.log_every} must be >= 1"),
        (recipe.train.eval_every >= 0, "train.eval_every", f"{recipe.train.eval_every} must be >= 0 (0: only at the end)"),
        (recipe.train.eval_batches >= 1, "train.eval_batches",
         f"{recipe.train.eval_batches} must be >= 1 (validation batches per evaluation; 0 would report a loss "
         "of 0.000)"),
        (recipe.train.max_bad_steps >= 1, "train.max_bad_steps", f"{recipe.train.max_bad_steps} must be >= 1"),
        (recipe.train.spike_threshold == 0 or recipe.train.spike_threshold > 1, "train.spike_threshold",
         f"{recipe.train.spike_threshold} must be > 1 (a ratio to the running mean loss) or 0 to disable"),
        (math.isfinite(recipe.optimizer.lr) and recipe.optimizer.lr > 0, "optimizer.lr",
         f"{recipe.optimizer.lr} must be a finite number > 0, e.g. 3e-4"),
        (0 <= recipe.optimizer.beta1 < 1, "optimizer.beta1", f"{recipe.optimizer.beta1} must be in [0, 1)"),
        (0 <= recipe.optimizer.beta2 < 1, "optimizer.beta2", f"{recipe.optimizer.beta2} must be in [0, 1)"),
        (recipe.optimizer.eps > 0, "optimizer.eps", f"{recipe.optimizer.eps} must be > 0"),
        (recipe.optimizer.weight_decay >= 0, "optimizer.weight_decay", f"{recipe.optimizer.weight_decay} must be >= 0"),
        (recipe.optimizer.grad_clip >= 0, "optimizer.grad_clip", f"{recipe.optimizer.grad_clip} must be >= 0 (0 disables)"),
        (recipe.schedule.warmup_steps is None or recipe.schedule.warmup_steps >= 0, "schedule.warmup_steps",
         f"{recipe.schedule.warmup_steps} must be >= 0"),
        (recipe.schedule.warmup_steps is None or recipe.schedule.warmup_steps < recipe.train.steps,
         "schedule.warmup_steps", f"{recipe.schedule.warmup_steps} must be < train.steps={recipe.train.steps}; "
         f"set a shorter warm-up (e.g. schedule.warmup_steps={recipe.train.steps // 10}) or schedule.warmup_steps=null "
         "to let schedule.warmup_fraction follow train.steps"),
        (0 <= recipe.schedule.warmup_fraction < 1, "schedule.warmup_fraction",
         f"{recipe.schedule.warmup_fraction} must be in [0, 1) (a fraction of train.steps)"),
        (0 <= recipe.schedule.min_lr <= recipe.optimizer.lr, "schedule.min_lr",
         f"{recipe.schedule.min_lr} must be between 0 and optimizer.lr={recipe.optimizer.lr}"),
        (recipe.checkpoint.every >= 0, "checkpoint.every", f"{recipe.checkpoint.every} must be >= 0 (0: only at the end)"),
        (recipe.checkpoint.keep_last >= 1, "checkpoint.keep_last", f"{recipe.checkpoint.keep_last} must be >= 1"),
        (not any(c in recipe.run.name for c in "/\\\0") and recipe.run.name not in (".", ".."), "run.name",
         f"{recipe.run.name!r} must be a plain directory name (no '/'); use run.root for the parent"),
        (bool(recipe.run.root) and "\0" not in recipe.run.root, "run.root",
         f"{recipe.run.root!r} must be a directory path; use e.g. run.root=runs"),
        (not os.path.exists(recipe.run.root) or os.path.isdir(recipe.run.root), "run.root",
         f"{recipe.run.root} exists and is not a directory; choose another run.root"),
    ]
    for ok, key, problem in checks:
        if not ok:
            raise ConfigError(f"{key}: {problem}")
    try:
        recipe.data.validate()
    except ValueError as err:
        raise ConfigError(f"data.{err}") from None
    if recipe.init_from is not None and not os.path.exists(recipe.init_from):
        raise ConfigError(
            f"init_from: {recipe.init_from} does not exist; run the previous stage first or fix the path"
        )


def _closest(key: str, valid, prefix: str = "") -> str:
    valid = list(valid)
    near = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    if near:
        return "did you mean " + " or ".join(f"{prefix}{n}" for n in near) + "?"
    shown = ", ".join(valid[:12]) + (", ..." if len(valid) > 12 else "")
    return f"valid keys: {shown}"


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _type_name(ftype: Any) -> str:
    return getattr(ftype, "__name__", str(ftype))
