"""Reading user JSONL (`{"text": ...}` documents; chat records via `read_jsonl_records`) with one-line, fixable errors.

Every problem names `data.path=<file>:<line>` and what to do about it, because the person reading it
is usually looking at a recipe, not at this code. Blank lines are allowed (editors add them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import numpy as np

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class JsonlTexts:
    """The documents of a JSONL file, in file order, and how many malformed lines were skipped."""

    texts: list[str]
    skipped_lines: int


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes, read in chunks; raises the user-facing ValueError if it is missing."""
    check_exists(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_exists(path: str) -> None:
    """Raise a one-line ValueError naming `path` and the fix when it is not a readable file."""
    if not os.path.isfile(path):
        raise ValueError(
            f"data.path={path}: file not found (cwd {os.getcwd()}); "
            "set data.path to a JSONL file with one {\"text\": ...} object per line"
        )


def _decode_line(raw: bytes) -> tuple[object, str | None]:
    """(parsed JSON, None) or (None, problem) for one non-blank line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"not valid UTF-8 (byte {err.start})"
    try:
        return json.loads(line), None
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg} at column {err.colno})"


def _text_of(obj: object) -> tuple[str | None, str | None]:
    """(text, None) for a good `{"text": ...}` object, (None, problem) otherwise."""
    if not isinstance(obj, dict):
        return None, f"expected a JSON object like {{\"text\": ...}}, got {type(obj).__name__}"
    if "text" not in obj:
        keys = ", ".join(sorted(obj)[:5]) or "none"
        return None, f"no \"text\" key (keys: {keys})"
    if not isinstance(obj["text"], str):
        return None, f"\"text\" must be a string, got {type(obj['text']).__name__}"
    return obj["text"], None


class JsonlRecords:
    """Iterate `parse(obj)` of every non-blank line of `path` in order, streaming (one line in memory).

    `parse` returns (value, None), or (None, problem) for a malformed record; a value of None or ""
    is dropped silently. A malformed line raises `ValueError("data.path=<path>:<line>: <problem>;
    <fix>")` unless `skip_bad_lines`, in which case it is counted in `skipped` (after the pass),
    logged once, and skipped. Each iteration is a new pass over the file.
    """

    def __init__(self, path: str, parse: Callable[[object], tuple[T | None, str | None]],
                 skip_bad_lines: bool = False) -> None:
        check_exists(path)
        self.path, self.parse, self.skip_bad_lines = path, parse, skip_bad_lines
        self.skipped = 0

    def __iter__(self) -> Iterator[T]:
        skipped = 0
        first_bad = ""
        with open(self.path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                stripped = raw.strip()
                if not stripped:
                    continue
                obj, problem = _decode_line(stripped)
                value = None
                if problem is None:
                    value, problem = self.parse(obj)
                if problem is not None:
                    where = f"data.path={self.path}:{lineno}"
                    if not self.skip_bad_lines:
                        raise ValueError(f"{where}: {problem}; fix the line or set data.skip_bad_lines=true")
                    skipped += 1
                    first_bad = first_bad or f"{where}: {problem}"
                    continue
                if value:
                    yield value
        self.skipped = skipped
        if skipped:
            log.warning("skipped %d malformed line(s) of %s (first: %s)", skipped, self.path, first_bad)


def read_jsonl_records(
    path: str, parse: Callable[[object], tuple[T | None, str | None]], skip_bad_lines: bool = False
) -> tuple[list[T], int]:
    """`parse(obj)` of every non-blank line of `path` in order, and how many bad lines were skipped
    (see `JsonlRecords`)."""
    records = JsonlRecords(path, parse, skip_bad_lines)
    values = list(records)
    return values, records.skipped


def jsonl_texts(path: str, skip_bad_lines: bool = False) -> JsonlRecords:
    """The `text` values of `path`, streamed (see `JsonlRecords`; empty texts are dropped)."""
    return JsonlRecords(path, _text_of, skip_bad_lines)


def held_out_mask(n: int, num_val: int, seed: int, path: str, unit: str = "documents") -> np.ndarray:
    """Which of the `n` records of `path` form the held-out split: a seeded pick of `num_val`."""
    if num_val >= n:
        raise ValueError(
            f"data.num_val_documents={num_val}: {path} has only {n} {unit}; "
            f"set data.num_val_documents to at most {n - 1} (e.g. {n // 10})"
        )
    held_out = np.zeros(n, dtype=bool)
    held_out[np.random.default_rng(seed).permutation(n)[:num_val]] = True
    return held_out


def read_jsonl_texts(path: str, skip_bad_lines: bool = False) -> JsonlTexts:
    """All `text` values of `path` in order. Empty texts are dropped (they carry no training signal).

    A malformed line raises `ValueError("data.path=<path>:<line>: <problem>; <fix>")` unless
    `skip_bad_lines`, in which case it is counted, logged once with its location, and skipped.
    """
    texts, skipped = read_jsonl_records(path, _text_of, skip_bad_lines)
    if not texts:
        raise no_documents(path)
    return JsonlTexts(texts=texts, skipped_lines=skipped)


def no_documents(path: str) -> ValueError:
    return ValueError(
        f"data.path={path}: no documents (no line has a non-empty \"text\"); "
        "add lines like {\"text\": \"...\"} or point data.path at another file"
    )
