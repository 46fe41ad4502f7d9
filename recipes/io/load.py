"""One way to load a model for inference: `load_model(path)` for a run, a checkpoint or a serving directory.

    run directory               its newest valid checkpoint + config.yaml (what recipes.run, average,
                                merge_ranks and import_hf write)
    checkpoints/step_* dir      that checkpoint + its run's config.yaml
    serving directory           config.json + safetensors (what recipes.export writes, or a released
                                checkpoint in a layout we read)

Evaluation, generation, scoring, the pipeline's evaluator and MindVL's resolution search all start here.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import models
from recipes.io import checkpoint as ckpt_lib
from recipes.io import rundir


@dataclass
class LoadedModel:
    model: Any                 # the model Cell, in inference mode
    model_cfg: Any             # its config dataclass
    spec: Any                  # its ModelSpec (pangu.spec)
    tokenizer: Any             # the tokenizer it was trained / exported with (None when the directory has none)
    source: str                # what was loaded: a checkpoint directory or a serving directory
    run_dir: str | None = None  # the run directory (None for a serving directory)
    recipe: Any = None         # the run's resolved recipe (None for a serving directory)
    step: int = 0              # the checkpoint's step
    processor: Any = None      # MindVL: the image processor of the run / serving directory

    @property
    def checkpoint(self) -> str:
        return self.source


def is_serving_dir(path: str) -> bool:
    """True for a directory with config.json and safetensors weights (the serving layout)."""
    from recipes.io.hf import INDEX_FILE, SINGLE_FILE

    return os.path.isfile(os.path.join(path, "config.json")) and any(
        os.path.isfile(os.path.join(path, f)) for f in (INDEX_FILE, SINGLE_FILE))


def load_model(path: str, log=print, compute_dtype: str | None = None) -> LoadedModel:
    """The model, its config, spec and tokenizer from a run, checkpoint or serving directory (`compute_dtype`:
    build it in that dtype instead of the one it was trained / exported in)."""
    path = os.path.normpath(path)
    if is_serving_dir(path):
        return _load_serving(path, compute_dtype)
    loc = rundir.locate(path, log)
    if loc.run_dir is None:
        raise ValueError(f"{loc.checkpoint}: no config.yaml in its run directory; load a run directory made by "
                         "recipes.run (or its checkpoints/step_*), or a serving directory with config.json")
    recipe, model_cfg = rundir.load_run_config(loc.run_dir)
    model_cfg = _with_dtype(model_cfg, compute_dtype)
    spec = models.spec_of(model_cfg)
    model = spec.build(model_cfg, 0)
    ckpt_lib.load_into(model, ckpt_lib.load_tensors(loc.checkpoint, ckpt_lib.MODEL_FILE), loc.checkpoint)
    model.set_train(False)
    if spec.serving.run_assets is not None:
        assets = spec.serving.run_assets(recipe.data, loc.run_dir)
    else:
        from recipes.data import load_tokenizer

        assets = {"tokenizer": load_tokenizer(recipe.data)}
    return LoadedModel(model, model_cfg, spec, assets["tokenizer"], loc.checkpoint, loc.run_dir, recipe, loc.step,
                       assets.get("processor"))


def _with_dtype(cfg, compute_dtype: str | None):
    return cfg if compute_dtype is None else dataclasses.replace(cfg, compute_dtype=compute_dtype).validate()


def _load_serving(path: str, compute_dtype: str | None = None) -> LoadedModel:
    from recipes.io.hf import import_hf

    cfg, state = import_hf(path)
    cfg = _with_dtype(cfg, compute_dtype)
    spec = models.spec_of(cfg)
    model = spec.build(cfg, 0)
    ckpt_lib.load_into(model, state, f"import {path}")
    model.set_train(False)
    if spec.serving.serving_assets is not None:
        assets = spec.serving.serving_assets(path)
    else:
        from recipes.data.tokenizer import open_tokenizer

        # sentencepiece tokenizer.model (ours, Pangu's) or a tokenizer.json only (Qwen2 / Qwen2.5: JsonTokenizer)
        files = [os.path.join(path, n) for n in ("tokenizer.model", "tokenizer.json")]
        found = next((f for f in files if os.path.isfile(f)), None)
        assets = {"tokenizer": open_tokenizer(found) if found else None}
    return LoadedModel(model, cfg, spec, assets["tokenizer"], path, processor=assets.get("processor"))
