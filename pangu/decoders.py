"""The text decoders of the family by name (`model.arch`): the specs MindVL can compose.

The registry of every architecture, MindVL included, is `models` (one level up the stack).
"""
from pangu.pro_moe.spec import SPEC as PRO_MOE
from pangu.qwen2.spec import SPEC as QWEN2
from pangu.ultra_moe.spec import SPEC as ULTRA_MOE

DECODERS = {spec.name: spec for spec in (QWEN2, PRO_MOE, ULTRA_MOE)}


def get_decoder(name: str):
    """The ModelSpec of text decoder `name` (one-line ValueError naming the choices)."""
    if name not in DECODERS:
        raise ValueError(f"text_arch: {name!r} is not a decoder; use one of {sorted(DECODERS)}")
    return DECODERS[name]
