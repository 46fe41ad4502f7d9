"""The model facts a parallel plan needs, read from the architecture's ModelSpec (pangu.spec).

    model_shape(cfg)      pangu.shape.ModelShape: dims, layer kinds, experts (the spec's `shape`)
    parameters(cfg)       every parameter's name, shape and logical axes, read off the real model
                          without allocating it (the spec's `parameters`), so the 72B / 718B presets
                          are planned from the same declaration the trainer builds
    count_parameters(cfg) the spec's analytic (total, active) under the published convention
    resolve_config(model) a strategy's `model:` section -> a config

`cfg` is a config dataclass of any registered architecture, or a released config.json loaded as a
dict: that is read by the spec whose serving layout writes its `model_type`, through the same
`config_from_hf` the importer (`recipes.import_hf`) uses. Nothing here guesses an architecture.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import models
from pangu.shape import ModelShape, VisionShape  # noqa: F401  (the planner's types, re-exported)
from pangu.spec import ParamInfo


def config_of(cfg: Any):
    """A config dataclass, or a config.json dict read through its architecture's serving layout."""
    if isinstance(cfg, dict):
        spec = models.spec_for_model_type(cfg.get("model_type"))
        return spec.layout(cfg.get("model_type")).config_from_hf(cfg, None)
    return cfg


def model_shape(cfg: Any) -> ModelShape:
    if isinstance(cfg, ModelShape):
        return cfg
    cfg = config_of(cfg)
    return models.spec_of(cfg).shape(cfg)


def parameters(cfg: Any) -> list[ParamInfo]:
    """Every parameter of the model (training layout: routed experts stacked [E, out, in])."""
    cfg = config_of(cfg)
    return models.spec_of(cfg).parameters(cfg)


def parameter_shapes(cfg: Any) -> list[tuple[str, tuple]]:
    """(name, shape) of every parameter (see `parameters`)."""
    return [(p.name, p.shape) for p in parameters(cfg)]


def count_parameters(cfg: Any) -> tuple[int, int]:
    """(total, active) under the architecture's published convention."""
    cfg = config_of(cfg)
    total, active = models.spec_of(cfg).count_parameters(cfg)
    return int(total), int(active)


def resolve_config(model: dict) -> Any:
    """Strategy `model:` section -> config object.

    `{arch, preset, overrides}` asks the architecture's spec (`models.get_spec(arch).config(preset)`);
    `{config_json: path}` reads a released HF-style config.json (what-if planning of a released model).
    """
    if model.get("config_json"):
        path = model["config_json"]
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"model.config_json: cannot read {path} ({e}); give a config.json file") from None
        return config_of(d)
    arch, preset = model.get("arch"), model.get("preset", "full")
    if not arch:
        raise ValueError("model.arch: missing; give `arch` + `preset` (an architecture of `models`) or `config_json`")
    cfg = models.get_spec(arch).config(preset)
    overrides = model.get("overrides") or {}
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    return cfg
