"""Parameter initialisation, kept apart from the module code so schemes can be swapped.

`init_normal`: weights ~ N(0, std), biases 0, norm weights 1, router_scale 1 (Pangu Pro MoE /
HF default). Deterministic given `ms.set_seed` (or an explicit seed): numpy draws in sorted
parameter-name order. A TinyInit scheme (MODELS.md) can be added as another function with the
same signature plus a per-name std rule.
"""
import numpy as np
import mindspore as ms
from mindspore import Tensor

ONES_SUFFIXES = ("norm.weight", "layernorm.weight", "router_scale")
ZERO_SUFFIXES = (".bias", "e_score_correction_bias")


def _seed(seed):
    if seed is None:
        seed = ms.get_seed()
    return 0 if seed is None else int(seed)


def param_kind(name: str) -> str:
    """"ones" | "zeros" | "normal" from the parameter name."""
    if name.endswith(ONES_SUFFIXES):
        return "ones"
    if name.endswith(ZERO_SUFFIXES):
        return "zeros"
    return "normal"


def init_normal(model, std, seed=None, std_for=None):
    """Initialise every parameter of `model` in place. `std_for(name) -> float | None` may
    override the std of individual weights (hook for TinyInit-like schemes)."""
    rng = np.random.default_rng(_seed(seed))
    for name, p in sorted(model.parameters_and_names(), key=lambda kv: kv[0]):
        kind = param_kind(name)
        if kind == "ones":
            data = np.ones(p.shape, np.float32)
        elif kind == "zeros":
            data = np.zeros(p.shape, np.float32)
        else:
            s = std if std_for is None else (std_for(name) or std)
            data = rng.normal(0.0, s, size=p.shape).astype(np.float32)
        p.set_data(Tensor(data))
    return model
