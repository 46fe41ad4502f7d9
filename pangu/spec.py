"""ModelSpec: every fact the tools need about one architecture, in one place (torchtitan's ModelSpec).

One spec per architecture lives next to its config (`pangu/pro_moe/spec.py`, `pangu/ultra_moe/spec.py`,
`mindvl/spec.py`); the registry `models` lists them. The trainer, export/import, evaluation, the
benchmark and the parallel planner read a spec and never guess an architecture from a name:

    config_cls, presets           the typed config dataclass and its named presets (tiny, bench, full)
    instantiate(cfg)              the model Cell, parameters from initializers (pangu.common.layers.param)
    init_weights(model, cfg, seed) its initial values (deterministic in the seed)
    count_parameters(cfg)         analytic (total, active) under the published convention
    shape(cfg)                    the planner's ModelShape (pangu.shape): dims, layer kinds, FLOPs
    serving                       the Hugging Face serving layout both ways (ServingLayout)
    data_config_cls, build_dataset, evaluate    optional: an architecture with its own data (MindVL)

and derives from them `config`, `build`, `parameters` (names, shapes and logical axes of the real
model, read off an instance whose parameters get no memory: the 718B preset lists its parameters in
about a second) and `train_flops`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import contextlib

import numpy as np

from pangu.common.config_utils import replace_strict
from pangu.shape import ModelShape


@dataclass(frozen=True)
class ParamInfo:
    """One parameter of a model: serving-layout-style name, shape, logical axes, trained or buffer."""
    name: str
    shape: tuple
    axes: tuple        # one logical axis name per dimension (pangu.common.layers' vocabulary)
    trainable: bool


@dataclass(frozen=True)
class ServingLayout:
    """How one architecture maps to and from its Hugging Face serving layout (vLLM, MindIE, transformers)."""
    model_type: str                                   # config.json "model_type" written on export
    architecture: str                                 # config.json "architectures"[0]
    to_hf: Callable[[dict, Any], dict]                # (our state, cfg) -> serving state
    from_hf: Callable[[dict, Any], dict]              # (serving state, cfg) -> our state
    config_to_hf: Callable[[Any], dict]               # cfg -> config.json
    config_from_hf: Callable[[dict, Optional[Sequence[str]]], Any]  # (config.json, tensor names | None) -> cfg
    # keys a serving loader needs that an imported source's config.json may lack (a re-export of an imported
    # checkpoint keeps the source's config.json and adds only these; e.g. openPangu's router_enable_expert_bias)
    required_keys: tuple = ()
    # Optional hooks of an architecture whose serving directory carries more than a sentencepiece
    # tokenizer (MindVL: tokenizer.json + preprocessor_config.json); None = plain text model.
    run_assets: Optional[Callable] = None       # (data config, run_dir) -> {"tokenizer": .., "processor": ..}
    write_assets: Optional[Callable] = None     # (cfg, out, tokenizer, processor) -> config.json id keys
    read_assets: Optional[Callable] = None      # (hf_dir, out, cfg) -> the `data:` section of an imported run
    serving_assets: Optional[Callable] = None   # (hf_dir) -> {"tokenizer": .., "processor": ..} of a serving dir
    example_inputs: Optional[Callable] = None   # (cfg, seq_len, patches) -> numpy inputs of the MINDIR graph


@dataclass(frozen=True)
class ModelSpec:
    """One architecture (see the module docstring)."""
    name: str                                         # `model.arch` in recipes
    config_cls: type
    presets: Mapping[str, Callable[[], Any]]
    instantiate: Callable[[Any], Any]                 # cfg -> model Cell (values set by init_weights)
    init_weights: Callable[[Any, Any, Optional[int]], Any]  # (model, cfg, seed) -> model
    count_parameters: Callable[[Any], tuple]
    shape: Callable[[Any], ModelShape]
    serving: ServingLayout                            # the default serving layout (export's --layout default)
    other_layouts: Mapping[str, ServingLayout] = field(default_factory=dict)   # --layout NAME -> layout
    data_config_cls: Optional[type] = None            # the recipe's `data:` dataclass (default: text data)
    build_dataset: Optional[Callable] = None          # (data config, split) -> dataset with PackedDataset's API
    evaluate: Optional[Callable] = None               # (model, dataset) -> {metric: value} at every evaluation
    forward_inputs: Optional[Callable] = None         # (cfg, ids, pixel_values, grid_thw) -> model(...)'s numpy
                                                      # inputs for one sequence (None: a text model's three)
    init_from_state: Optional[Callable] = None        # (cfg, init_from tensors, {name: Parameter}, log) -> the
                                                      # tensors to load (MindVL: a text decoder's checkpoint)

    @property
    def layouts(self) -> dict:
        """Every serving layout by its model_type (the default first)."""
        return {self.serving.model_type: self.serving, **self.other_layouts}

    def layout(self, name: str | None = None) -> ServingLayout:
        """The serving layout `name` (a model_type; None: the default), or a one-line ValueError."""
        if name is None:
            return self.serving
        if name not in self.layouts:
            raise ValueError(f"--layout: {self.name} has no {name!r} serving layout; use one of {sorted(self.layouts)}")
        return self.layouts[name]

    def sequence_inputs(self, cfg, ids, pixel_values=None, grid_thw=None) -> list:
        """`model(...)`'s numpy inputs for one token sequence (batch of one): ids, positions 0.., one segment
        for a text model; the arch's `forward_inputs` hook for one that also takes images."""
        if self.forward_inputs is not None:
            return self.forward_inputs(cfg, ids, pixel_values, grid_thw)
        if pixel_values is not None or grid_thw is not None:
            raise ValueError(f"pixel values: {self.name} is a text model; score it with token ids only")
        ids = np.asarray(ids, np.int32).reshape(1, -1)
        return [ids, np.arange(ids.shape[1], dtype=np.int32)[None], np.ones_like(ids)]

    def config(self, preset: str = "tiny", **overrides):
        """A preset's config with overrides (unknown keys name their neighbours), validated."""
        if preset not in self.presets:
            raise ValueError(f"preset: unknown {preset!r} for {self.name}; use one of {sorted(self.presets)}")
        cfg = replace_strict(self.presets[preset](), **overrides)
        cfg.validate()
        return cfg

    def build(self, cfg, seed: Optional[int] = None):
        """The initialised model (values deterministic in `seed`)."""
        return self.init_weights(self.instantiate(cfg), cfg, seed)

    def parameters(self, cfg) -> list[ParamInfo]:
        """Every parameter of the model `cfg` describes, read off an instance whose parameters are never
        allocated (MindSpore's `Parameter.init_param = False`: shape, dtype and initializer only).

        Every op resolves to its reference inside (`ops.forced_impl`), so no CPU kernel is built just
        to describe a model."""
        from ops import forced_impl

        with forced_impl("reference"), _unallocated_parameters():
            model = self.instantiate(cfg)
        return [ParamInfo(name, tuple(p.shape), p.logical_axes, bool(p.requires_grad))
                for name, p in model.parameters_and_names()]

    def train_flops(self, cfg, batch: int, seq: int, vision_stats: dict | None = None) -> dict:
        """Model FLOPs of one training step by component (pangu.shape.ModelShape.train_flops)."""
        return self.shape(cfg).train_flops(batch, seq, vision_stats)


@contextlib.contextmanager
def _unallocated_parameters():
    """Parameters created inside keep their shape and initializer but get no memory (MindSpore allocates
    a Parameter built from `initializer(...)` at once unless the class says `init_param = False`)."""
    from mindspore import Parameter

    before = getattr(Parameter, "init_param", True)
    Parameter.init_param = False
    try:
        yield
    finally:
        Parameter.init_param = before
