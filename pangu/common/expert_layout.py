"""Routed experts: our stacked [E, out, in] weights <-> the serving layout's one tensor per expert.

Shared by the Pro and Ultra converters (values are numpy arrays).
"""
import re

import numpy as np

STACKED = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_proj|up_proj|down_proj)$")
PER_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def split_stacked(name: str, value: np.ndarray) -> dict | None:
    """Our stacked expert tensor as per-expert serving tensors; None when `name` is not one."""
    m = STACKED.match(name)
    if m is None:
        return None
    return {f"{m.group(1)}.{e}.{m.group(2)}.weight": value[e] for e in range(value.shape[0])}


def collect_per_expert(name: str, value: np.ndarray, experts: dict) -> bool:
    """Keep a serving per-expert tensor in `experts` for `stack_per_expert`; False when it is not one."""
    m = PER_EXPERT.match(name)
    if m is None:
        return False
    experts.setdefault(f"{m.group(1)}.{m.group(3)}", {})[int(m.group(2))] = value
    return True


def stack_per_expert(experts: dict) -> dict:
    """{stacked name: [E, out, in]} from what `collect_per_expert` kept; every index 0..E-1 must be there."""
    out = {}
    for key, by_e in experts.items():
        n = len(by_e)
        if sorted(by_e) != list(range(n)):
            raise ValueError(f"{key}: expert indices {sorted(by_e)} are not 0..{n - 1}; "
                             "the checkpoint is missing experts")
        out[key] = np.stack([by_e[e] for e in range(n)])
    return out


def model_state(model) -> dict:
    """{our name: numpy array} of a MindSpore model (buffers included)."""
    return {name: p.asnumpy() for name, p in model.parameters_and_names()}
