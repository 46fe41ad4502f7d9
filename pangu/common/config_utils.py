"""Helpers shared by the variant config dataclasses: validation and strict overrides."""
import dataclasses
import difflib


def check(cond, field, problem, fix):
    """Raise ValueError("<field>: <problem>; <fix>") unless cond."""
    if not cond:
        raise ValueError(f"{field}: {problem}; {fix}")


def check_positive_ints(cfg, names):
    for name in names:
        v = getattr(cfg, name)
        check(isinstance(v, int) and not isinstance(v, bool) and v > 0, name,
              f"must be a positive integer, got {v!r}", "set a value >= 1")


def check_choice(cfg, name, choices):
    v = getattr(cfg, name)
    check(v in choices, name, f"unknown value {v!r}", f"use one of {tuple(choices)}")


def replace_strict(cfg, **overrides):
    """dataclasses.replace that names unknown keys and their closest valid neighbours."""
    names = [f.name for f in dataclasses.fields(cfg)]
    for key in overrides:
        if key not in names:
            near = difflib.get_close_matches(key, names, n=3)
            raise ValueError(f"{key}: unknown config field; valid neighbours: {near or names}")
    return dataclasses.replace(cfg, **overrides)


_ABSENT = object()


class ConfigReader:
    """Reads a released config.json (a dict) under every spelling the layouts of one architecture use.

    `get(*names, default=..., rule=...)` returns the first present, non-null spelling; when none is
    there, the layout's own rule (`rule()`, e.g. head_dim = hidden_size / num_attention_heads) or its
    config class's default; a key with neither is refused in one line naming it and its spellings.
    `used` records every key read, so a re-export can keep the keys a model does not use.
    """

    def __init__(self, d: dict):
        self.d = dict(d)
        self.used = set()

    def has(self, *names) -> bool:
        return any(self.d.get(n) is not None for n in names)

    def get(self, *names, default=_ABSENT, rule=None):
        self.used.update(names)
        for n in names:
            if self.d.get(n) is not None:
                return self.d[n]
        if rule is not None:
            return rule()
        if default is not _ABSENT:
            return default
        also = f" (also spelled {', '.join(names[1:])})" if len(names) > 1 else ""
        raise ValueError(f"{names[0]}: absent from config.json{also} and no rule derives it; add the key "
                         "with the checkpoint's value")

    def refuse(self, name: str, value, why: str, fix: str):
        raise ValueError(f"{name}: {value!r} {why}; {fix}")
