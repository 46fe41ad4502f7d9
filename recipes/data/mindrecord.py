"""MindRecord token shards in MindFormers' layout: one `input_ids` column of token ids per record.

MindFormers' pre-training converters (`mindformers/tools/dataset_preprocess/llama/llama_preprocess.py`,
`pangualpha/pretrain_data_process.py`) write a MindRecord whose schema is
`{"input_ids": {"type": "int32", "shape": [-1]}}`: every document is tokenized and ended with the eos/eod
id, the documents are concatenated, and the stream is cut into records of `seq_length + 1` tokens
("stitched" rows; the model shifts each into inputs and labels). What is read here is exactly that
column, int32 or int64, in record order: the records are concatenated into one token stream and
split into documents at every eod. Stitched rows and one-document-per-record files therefore give
the same documents; tokens after the last eod form one more document. MindFormers' SFT converters
write padded records with a `labels` column instead: their pad ids would be read as text, so they
are not a source here (SFT data is `chat_jsonl`). The writer here produces MindFormers' layout,
except that the last record keeps the remainder (MindFormers drops it), so no token is lost.

Reading. A first pass over the file (`MindDataset` in file order; memory = its small prefetch queue)
finds the record lengths and eod positions; after that, records are read by index with `MindDataset`
and a `SubsetSampler` (MindSpore's random access: it keeps the per-record page offsets in memory, about
a few tens of bytes per record, and reads only the records asked for). A truncated or corrupted file
makes MindSpore's reader fail; that failure is turned into one line naming the file.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np

COLUMN = "input_ids"  # MindFormers' token column
PAGE_SIZE = 1 << 22  # 4 MB pages: a record (<= PAGE_SIZE / 2) must fit; MindRecord's default is 32 MB
HEADER_SIZE = 1 << 20  # 1 MB header holds the page table of a multi-GB shard (default 16 MB pads small files)
MAX_RECORD_TOKENS = PAGE_SIZE // 8  # int32 records up to half a page


def _reader_failed(path: str, err: Exception) -> ValueError:
    """MindSpore's multi-paragraph reader error as one line naming the file."""
    lines = [ln.strip() for ln in str(err).splitlines() if "[ERROR]" in ln or "Invalid" in ln or "Failed" in ln]
    reason = lines[0].split("] ")[-1][:160] if lines else type(err).__name__
    return ValueError(f"{path}: MindSpore cannot read it as MindRecord ({reason}); the file is truncated or "
                      "corrupted (or its .db index is missing): re-copy it or re-run prepare")


class MindRecordShard:
    """One MindRecord file (with its `.db` index) whose `input_ids` column holds token ids.

    The file is read alone (MindSpore's list form), also when it is one of several files written by
    one `FileWriter(shard_num=N)` conversion: list each file (a glob does), and note that a document
    cut by the boundary between two such files is read as two documents.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        for p in (path, f"{path}.db"):
            if not os.path.isfile(p):
                raise ValueError(f"{p}: file not found; a mindrecord shard is FILE + FILE.db: give FILE in data.paths")
        import mindspore.dataset as mds

        try:
            columns = mds.MindDataset([path], shuffle=False).get_col_names()
        except RuntimeError as err:
            raise _reader_failed(path, err) from None
        if COLUMN not in columns:
            raise ValueError(f"{path}: no {COLUMN!r} column (columns: {', '.join(columns)}); token shards in "
                             f"MindFormers' layout store the token ids as {COLUMN}")
        self.record_starts: np.ndarray | None = None  # int64 [R+1] token offset of each record (set by scan)

    @property
    def files(self) -> list[str]:
        return [self.path, f"{self.path}.db"]

    @property
    def data_file(self) -> str:
        return self.path

    def records(self) -> Iterator[np.ndarray]:
        """Every record's token ids in order (the one sequential pass)."""
        import mindspore.dataset as mds

        try:
            # MindDataset, not FileReader: FileReader converts each record in Python, several times slower
            # on 4097-token records
            ds = mds.MindDataset([self.path], columns_list=[COLUMN], shuffle=False, num_parallel_workers=1)
            for (ids,) in ds.create_tuple_iterator(output_numpy=True, num_epochs=1):
                if ids.ndim != 1 or ids.dtype.kind not in "iu":
                    raise ValueError(f"{self.path}: {COLUMN} is {ids.dtype} of shape {ids.shape}; token shards hold "
                                     "1-D int32/int64 token ids per record")
                yield ids
        except RuntimeError as err:
            raise _reader_failed(self.path, err) from None

    def read_records(self, record_ids: np.ndarray) -> dict[int, np.ndarray]:
        """{record id: token ids} of the (sorted, unique) `record_ids`, read by random access."""
        import mindspore.dataset as mds

        ids = [int(i) for i in record_ids]
        try:
            ds = mds.MindDataset([self.path], columns_list=[COLUMN], sampler=mds.SubsetSampler(ids),
                                 num_parallel_workers=1)
            values = [row[0] for row in ds.create_tuple_iterator(output_numpy=True, num_epochs=1)]
        except RuntimeError as err:
            raise _reader_failed(self.path, err) from None
        if len(values) != len(ids):
            raise ValueError(f"{self.path}: asked for {len(ids)} records, read {len(values)}; the file changed "
                             "since it was indexed: re-run prepare or clear data.cache_dir")
        return dict(zip(ids, values))


class MindRecordWriter:
    """Write documents as MindFormers-layout records of `record_tokens` tokens, atomically.

    `add(tokens)` appends one document (eod already appended by the caller); `close()` writes the
    remainder as a last, shorter record, commits, and moves FILE and FILE.db into place (MindRecord
    stores the file name inside, so they are written under their final name in a temporary
    directory and renamed together).
    """

    def __init__(self, path: str, record_tokens: int, records_per_write: int = 256) -> None:
        from mindspore.mindrecord import FileWriter

        if not 2 <= record_tokens <= MAX_RECORD_TOKENS:
            raise ValueError(f"--record-tokens: {record_tokens} must be in 2..{MAX_RECORD_TOKENS} "
                             "(MindFormers uses seq_length + 1, e.g. 4097)")
        self.path = Path(path)
        self.record_tokens = record_tokens
        self.records_per_write = records_per_write
        self._tmp_dir = self.path.parent / f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        self._tmp_dir.mkdir(parents=True)
        self._writer = FileWriter(str(self._tmp_dir / self.path.name), shard_num=1, overwrite=True)
        self._writer.set_page_size(PAGE_SIZE)
        self._writer.set_header_size(HEADER_SIZE)
        self._writer.add_schema({COLUMN: {"type": "int32", "shape": [-1]}}, "pretokenized")
        self._buffer: list[np.ndarray] = []
        self._buffered = 0

    def add(self, tokens: np.ndarray) -> None:
        self._buffer.append(np.asarray(tokens, dtype=np.int32))
        self._buffered += len(tokens)
        if self._buffered >= self.record_tokens * self.records_per_write:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        stream = np.concatenate(self._buffer) if self._buffer else np.zeros(0, np.int32)
        whole = len(stream) if final else len(stream) - len(stream) % self.record_tokens
        records = [{COLUMN: stream[i : i + self.record_tokens]} for i in range(0, whole, self.record_tokens)]
        if records:
            self._writer.write_raw_data(records)
        rest = stream[whole:]
        self._buffer, self._buffered = ([rest], len(rest)) if len(rest) else ([], 0)

    def close(self) -> None:
        self._flush(final=True)
        self._writer.commit()
        for name in (self.path.name, f"{self.path.name}.db"):
            os.replace(self._tmp_dir / name, self.path.parent / name)
        shutil.rmtree(self._tmp_dir)

    def abort(self) -> None:
        shutil.rmtree(self._tmp_dir, ignore_errors=True)
