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
