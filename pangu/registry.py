"""Architecture registry: arch name -> config class, presets, model class, parameter counter.

Each variant package exposes `ARCH_SPEC = dict(config_cls=..., presets={name: fn}, model_cls=...,
build_model=fn(cfg), count_parameters=fn(cfg) -> (total, active), convert_module="...")`.
Built-in variants are listed in `_BUILTIN` (module path) and imported on first use, so a variant
that is not written yet (or fails to import) does not break the others; `register()` adds more.

Optional spec keys used by the trainer (recipes/): `data_config_cls` (the dataclass of the recipe's
`data:` section) + `build_dataset(cfg, split)` (a dataset with PackedDataset's interface) for a model
that does not read the text data pipeline (MindVL), and `evaluate(model, dataset) -> {name: value}`
(extra validation metrics logged at every evaluation, e.g. MindVL's exact-match accuracy).
"""
import importlib

from pangu.common.config_utils import replace_strict

_BUILTIN = {"pangu_pro_moe": "pangu.pro_moe", "pangu_ultra_moe": "pangu.ultra_moe", "mindvl": "mindvl"}
ARCHS: dict = {}
_REQUIRED = ("config_cls", "presets", "model_cls", "build_model", "count_parameters")


def register(arch: str, spec: dict) -> None:
    """Register (or replace) an architecture spec."""
    missing = [k for k in _REQUIRED if k not in spec]
    if missing:
        raise ValueError(f"{arch}: ARCH_SPEC lacks {missing}; provide all of {_REQUIRED}")
    ARCHS[arch] = spec


def _load_builtins():
    for arch, module in _BUILTIN.items():
        if arch in ARCHS:
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and not module.startswith(exc.name):
                raise  # the variant exists but one of ITS imports is missing: surface it
            continue
        if hasattr(mod, "ARCH_SPEC"):
            register(arch, mod.ARCH_SPEC)


def get_spec(arch: str) -> dict:
    _load_builtins()
    if arch not in ARCHS:
        raise ValueError(f"arch: unknown {arch!r}; use one of {sorted(ARCHS)}")
    return ARCHS[arch]


def arch_names() -> list[str]:
    """Names of all registered architectures."""
    _load_builtins()
    return sorted(ARCHS)


def presets(arch: str) -> list[str]:
    """Preset names of one architecture."""
    return list(get_spec(arch)["presets"])


def get_config(arch: str, preset: str = "tiny", **overrides):
    """Preset config with overrides (unknown keys -> ValueError naming neighbours), validated."""
    spec = get_spec(arch)
    if preset not in spec["presets"]:
        raise ValueError(f"preset: unknown {preset!r} for {arch}; use one of "
                         f"{sorted(spec['presets'])}")
    cfg = replace_strict(spec["presets"][preset](), **overrides)
    cfg.validate()
    return cfg


def _arch_of(cfg) -> dict:
    _load_builtins()
    for spec in ARCHS.values():
        if isinstance(cfg, spec["config_cls"]):
            return spec
    raise ValueError(f"config: {type(cfg).__name__} is not a registered config class; "
                     f"register its arch in pangu.registry")


def build_model(cfg, seed=None):
    """Instantiate + initialise the model for a config of any registered arch."""
    return _arch_of(cfg)["build_model"](cfg, seed)


def count_parameters(cfg):
    """(total, active) analytic parameter count for a config of any registered arch."""
    return _arch_of(cfg)["count_parameters"](cfg)


_load_builtins()
