"""Our parameter names <-> a serving layout's, shared by every decoder's convert module.

Ours == serving except: routed experts are stored STACKED (`...mlp.experts.{gate,up,down}_proj`
[E, out, in]) where the serving layout has one tensor per expert (`...mlp.experts.{e}.{...}_proj.weight`
[out, in]); a few names differ by a suffix (`renames`); training-only buffers are not exported
(`drop`). Values are numpy arrays; linear weights are [out, in] on both sides (no transposes).
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


def _rename(name: str, renames) -> str:
    for ours, theirs in renames:
        if name.endswith(ours):
            return name[: -len(ours)] + theirs
    return name


def to_serving(state: dict, renames=(), drop=()) -> dict:
    """Our {name: array} -> serving {name: array}: experts split, suffixes renamed (ours, theirs),
    names ending in one of `drop` left out."""
    out = {}
    for name, value in state.items():
        value = np.asarray(value)
        split = split_stacked(name, value)
        if split is not None:
            out.update(split)
        elif not name.endswith(tuple(drop)):
            out[_rename(name, renames)] = value
    return out


def from_serving(state: dict, renames=(), skip=None) -> dict:
    """Serving {name: array} -> our {name: array}: per-expert tensors stacked in expert order, suffixes
    renamed back, names matching the regex `skip` (copies the serving layout stores twice) left out."""
    back = [(theirs, ours) for ours, theirs in renames]
    out, experts = {}, {}
    for name, value in state.items():
        value = np.asarray(value)
        if collect_per_expert(name, value, experts) or (skip is not None and skip.match(name)):
            continue
        out[_rename(name, back)] = value
    out.update(stack_per_expert(experts))
    return out
