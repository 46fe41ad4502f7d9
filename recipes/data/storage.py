"""Packed rows on disk as MindRecord, written atomically, read back whole into numpy.

Layout of one entry (a directory, named by the content key):

    <cache_dir>/rows-<split>-<key>/
        rows.mindrecord, rows.mindrecord.db    the five batch arrays, ROWS_PER_RECORD rows per record
                                               (each column flattened; reshape to [-1, seq_length])
        meta.json                              key inputs, shapes and packing statistics

MindRecord keeps an index file next to the data file, so the pair cannot be renamed file by file.
The whole directory is therefore written under a temporary name and renamed into place in one
`os.rename`: a reader sees a complete entry or none. If two processes build the same entry, the
second rename fails, and the loser discards its copy (the content is identical by construction).
Datasets here are small (a few thousand rows), so rows are loaded once into memory; batching is
then numpy indexing, far faster than the trainer consumes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np

from recipes.data.packing import BATCH_DTYPES, BATCH_KEYS

ROWS_FILE = "rows.mindrecord"
META_FILE = "meta.json"
ROWS_PER_RECORD = 256  # rows are stored in blocks: one record per row makes writing ~10x slower
_MR_TYPES = {np.int32: "int32", np.float32: "float32"}


def digest(obj: dict) -> str:
    """SHA-256 (hex) of a JSON-serialisable description: the content key of a cache entry."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def atomic_directory(entry_dir: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; when the block succeeds, rename it to `entry_dir` in one step.

    A reader sees a complete entry or none. If another process finished the same entry first, this
    copy is discarded (entries are named by their content, so both are the same).
    """
    entry_dir = Path(entry_dir)
    entry_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = entry_dir.with_name(f".{entry_dir.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp_dir.mkdir()
    try:
        yield tmp_dir
        try:
            os.rename(tmp_dir, entry_dir)
        except OSError:
            if not entry_dir.is_dir():
                raise
            shutil.rmtree(tmp_dir)  # another process finished the same entry first
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def write_rows(entry_dir: Path, rows: dict[str, np.ndarray], meta: dict) -> Path:
    """Write `rows` (the five [N, S] batch arrays) and `meta` as the cache entry `entry_dir`."""
    from mindspore.mindrecord import FileWriter

    with atomic_directory(entry_dir) as tmp_dir:
        num_rows = int(rows["input_ids"].shape[0])
        if num_rows:
            writer = FileWriter(str(tmp_dir / ROWS_FILE), shard_num=1, overwrite=True)
            schema = {k: {"type": _MR_TYPES[BATCH_DTYPES[k]], "shape": [-1]} for k in BATCH_KEYS}
            writer.add_schema(schema, "packed_rows")
            records = [
                {k: rows[k][i : i + ROWS_PER_RECORD].reshape(-1) for k in BATCH_KEYS}
                for i in range(0, num_rows, ROWS_PER_RECORD)
            ]
            writer.write_raw_data(records)
            writer.commit()
        meta = {**meta, "num_rows": num_rows, "seq_length": int(rows["input_ids"].shape[1])}
        (tmp_dir / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return Path(entry_dir)


def read_meta(entry_dir: Path) -> dict:
    return json.loads((Path(entry_dir) / META_FILE).read_text())


def read_rows(entry_dir: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The five [N, S] arrays of a cache entry (row order as written) and its metadata."""
    import mindspore.dataset as mds

    entry_dir = Path(entry_dir)
    meta = read_meta(entry_dir)
    num_rows, seq_length = meta["num_rows"], meta["seq_length"]
    out = {k: np.empty((num_rows, seq_length), dtype=BATCH_DTYPES[k]) for k in BATCH_KEYS}
    if num_rows:
        ds = mds.MindDataset(
            str(entry_dir / ROWS_FILE), columns_list=list(BATCH_KEYS), shuffle=False, num_parallel_workers=1
        )
        i = 0
        for record in ds.create_tuple_iterator(output_numpy=True, num_epochs=1):
            block = {k: value.reshape(-1, seq_length) for k, value in zip(BATCH_KEYS, record)}
            n = block["input_ids"].shape[0]
            for k in BATCH_KEYS:
                out[k][i : i + n] = block[k]
            i += n
        assert i == num_rows, f"{entry_dir}: read {i} rows, meta says {num_rows}"
    return out, meta
