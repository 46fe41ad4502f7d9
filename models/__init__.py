"""The registry of model architectures: `model.arch` name -> ModelSpec (pangu.spec).

Every tool reads an architecture through its spec: the trainer and the recipe system (config class,
presets, builder, data hooks), export / import (the serving layout), evaluation, the benchmark (FLOPs)
and the parallel planner (shape, parameters and their logical axes). Nothing guesses an
architecture from a name. The package sits above the model packages (pangu, mindvl) and below the
tools (parallel_strategies, recipes) in the import stack.
"""
from __future__ import annotations

import difflib

from mindvl.spec import PANGU_SPEC as MINDVL_PANGU, SPEC as MINDVL
from pangu.decoders import DECODERS
from pangu.spec import ModelSpec

SPECS: dict[str, ModelSpec] = {**DECODERS, MINDVL.name: MINDVL, MINDVL_PANGU.name: MINDVL_PANGU}


def arch_names() -> list[str]:
    """Names of every architecture (`model.arch`)."""
    return sorted(SPECS)


def get_spec(arch: str) -> ModelSpec:
    """The spec of `arch`; a one-line ValueError naming the closest names otherwise."""
    if arch not in SPECS:
        near = difflib.get_close_matches(str(arch), SPECS, n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(near)}?" if near else f"use one of {arch_names()}"
        raise ValueError(f"model.arch: unknown architecture {arch!r}; {hint}")
    return SPECS[arch]


def spec_of(cfg) -> ModelSpec:
    """The spec whose config class `cfg` is (exactly, else an instance of: a subclass's own spec wins)."""
    for spec in SPECS.values():
        if type(cfg) is spec.config_cls:
            return spec
    for spec in SPECS.values():
        if isinstance(cfg, spec.config_cls):
            return spec
    raise ValueError(f"config: {type(cfg).__name__} is not the config of any architecture; "
                     f"known: {arch_names()}")


def spec_for_model_type(model_type) -> ModelSpec:
    """The spec one of whose serving layouts writes config.json's `model_type` (import)."""
    for spec in SPECS.values():
        if model_type in spec.layouts:
            return spec
    known = sorted(mt for spec in SPECS.values() for mt in spec.layouts)
    raise ValueError(f"config.json: model_type {model_type!r} is not supported; known: {known}")


def get_config(arch: str, preset: str = "tiny", **overrides):
    """A preset config of `arch` with overrides, validated (`ModelSpec.config`)."""
    return get_spec(arch).config(preset, **overrides)


def build_model(cfg, seed=None):
    """The initialised model of any architecture's config."""
    return spec_of(cfg).build(cfg, seed)


def count_parameters(cfg) -> tuple:
    """(total, active) of any architecture's config, under its published convention."""
    return spec_of(cfg).count_parameters(cfg)
