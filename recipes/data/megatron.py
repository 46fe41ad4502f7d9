"""Megatron-LM token shards (`PREFIX.bin` + `PREFIX.idx`): read memory-mapped, write as preprocess_data.py does.

The format is Megatron's memory-mapped indexed dataset, version 1 (magic `MMIDIDX`), byte for byte as
Megatron-Core's `IndexedDataset` (`megatron/core/datasets/indexed_dataset.py`) writes and reads it;
the older Megatron-LM `MMapIndexedDataset` (`megatron/data/indexed_dataset.py`) writes the same bytes
for token ids (its float codes 6/7 are swapped, and floats are refused here anyway). Little-endian:

    PREFIX.idx
        magic               9 bytes     b"MMIDIDX\\x00\\x00"
        version             <Q          1
        dtype code          <B          1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 8 uint16
                                        (6 and 7 are float types: not token ids, refused)
        sequence count      <Q          S
        document count      <Q          D + 1 (the length of document_indices)
        sequence_lengths    int32[S]    tokens per sequence
        sequence_pointers   int64[S]    byte offset of each sequence in PREFIX.bin
        document_indices    int64[D+1]  sequence index where each document starts; [0] = 0, [-1] = S
        (sequence_modes     int8[S]     multimodal datasets only: not token documents, refused)
    PREFIX.bin              the tokens of every sequence back to back, in that dtype

A document is one sequence, or several with preprocess_data.py's `--split-sentences`; with
`--append-eod` its last token is the tokenizer's eod. The writer here does what preprocess_data.py
does for one JSON key without sentence splitting: one sequence per document, eod appended, dtype
uint16 when the vocabulary has fewer than 65500 ids and int32 otherwise (`DType.optimal_dtype`).

Only the .idx arrays are read into memory (20 bytes per sequence); the tokens stay memory-mapped and
a read touches only the bytes it asks for. Every structural inconsistency (a truncated file, a .bin
that does not match its .idx, a float dtype) is a one-line ValueError naming the file.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterator

import numpy as np

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document count
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}  # integer codes
CODE_OF_DTYPE = {np.dtype(v): k for k, v in DTYPE_CODES.items()}
SCAN_TOKENS = 1 << 24  # tokens per chunk of the full-shard scan (64 MB of int32)


def bin_path(prefix: str) -> str:
    return f"{prefix}.bin"


def idx_path(prefix: str) -> str:
    return f"{prefix}.idx"


def token_dtype(vocab_size: int) -> np.dtype:
    """Megatron's choice: uint16 below 65500 ids, int32 above (`DType.optimal_dtype`)."""
    return np.dtype(np.uint16 if vocab_size < 65500 else np.int32)


class MegatronShard:
    """One `PREFIX.bin` / `PREFIX.idx` pair: the index in memory, the tokens memory-mapped."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.idx_path, self.bin_path = idx_path(prefix), bin_path(prefix)
        for path in (self.idx_path, self.bin_path):
            if not os.path.isfile(path):
                raise ValueError(f"{path}: file not found; a megatron shard is PREFIX.bin + PREFIX.idx: "
                                 "give the prefix (no extension) in data.paths")
        seq_lengths, seq_pointers, self.document_indices, self.dtype = _read_index(self.idx_path)
        itemsize = self.dtype.itemsize
        # Sequences are written back to back, so token offsets are the running sum of lengths.
        self.sequence_starts = np.zeros(len(seq_lengths) + 1, dtype=np.int64)
        np.cumsum(seq_lengths, dtype=np.int64, out=self.sequence_starts[1:])
        if not np.array_equal(seq_pointers, self.sequence_starts[:-1] * itemsize):
            raise ValueError(f"{self.idx_path}: sequence pointers are not contiguous; the index is corrupted "
                             "(or not written by preprocess_data.py): re-run prepare")
        expected = int(self.sequence_starts[-1]) * itemsize
        actual = os.path.getsize(self.bin_path)
        if actual != expected:
            problem = "truncated" if actual < expected else "longer than its index"
            raise ValueError(f"{self.bin_path}: {problem}: {actual} bytes, {self.idx_path} describes {expected}; "
                             "re-copy the pair or re-run prepare")
        self.num_tokens = int(self.sequence_starts[-1])
        # A plain ndarray view of the map: slicing an np.memmap object costs ~5x more per call.
        self._tokens = (np.memmap(self.bin_path, dtype=self.dtype, mode="r").view(np.ndarray) if self.num_tokens
                        else np.zeros(0, self.dtype))

    @property
    def files(self) -> list[str]:
        return [self.idx_path, self.bin_path]

    @property
    def data_file(self) -> str:
        return self.bin_path

    def document_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """(start, stop) token offsets of every document (int64 [D] each), eod included."""
        di = self.document_indices
        return self.sequence_starts[di[:-1]], self.sequence_starts[di[1:]]

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens start..stop-1 of the shard (a view of the memory map)."""
        return self._tokens[start:stop]

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """The tokens at `positions` (int64 array of token offsets)."""
        return np.asarray(self._tokens[positions])

    def chunks(self) -> Iterator[np.ndarray]:
        """The whole token stream in chunks of SCAN_TOKENS (for the one full scan)."""
        for start in range(0, self.num_tokens, SCAN_TOKENS):
            yield np.asarray(self._tokens[start : start + SCAN_TOKENS])


def _read_index(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.dtype]:
    """(sequence_lengths, sequence_pointers, document_indices, token dtype) of a .idx file, checked."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise ValueError(f"{path}: truncated: {size} bytes, shorter than the {_HEADER.size}-byte header; "
                         "re-copy it or re-run prepare")
    magic, version, code, n_seq, n_doc = _HEADER.unpack(head)
    if magic != INDEX_MAGIC:
        raise ValueError(f"{path}: not a Megatron index (magic {magic!r}, expected {INDEX_MAGIC!r}); "
                         "give the prefix of a .bin/.idx pair written by preprocess_data.py or prepare")
    if version != INDEX_VERSION:
        raise ValueError(f"{path}: index version {version}; only version {INDEX_VERSION} (MMIDIDX) is read")
    if code not in DTYPE_CODES:
        what = "a float type" if code in (6, 7) else "unknown"
        raise ValueError(f"{path}: dtype code {code} is {what}, not token ids; token shards hold integers "
                         "(uint16 / int32 as preprocess_data.py writes)")
    expected = _HEADER.size + n_seq * (4 + 8) + n_doc * 8
    if size == expected + n_seq and n_seq:
        raise ValueError(f"{path}: a multimodal index (sequence modes); token shards are text documents only")
    if size != expected:
        problem = "truncated" if size < expected else f"{size - expected} bytes longer than its header says"
        raise ValueError(f"{path}: {problem}: {size} bytes, the header describes {expected}; "
                         "re-copy it or re-run prepare")
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    offset = _HEADER.size
    lengths = np.frombuffer(mm, dtype=np.int32, count=n_seq, offset=offset)
    pointers = np.frombuffer(mm, dtype=np.int64, count=n_seq, offset=offset + 4 * n_seq)
    documents = np.frombuffer(mm, dtype=np.int64, count=n_doc, offset=offset + 12 * n_seq)
    if n_doc < 1 or documents[0] != 0 or documents[-1] != n_seq or np.any(np.diff(documents) < 0) \
            or np.any(lengths < 0):
        raise ValueError(f"{path}: inconsistent document indices or lengths; the index is corrupted: re-run prepare")
    return lengths, pointers, documents, np.dtype(DTYPE_CODES[code])


class MegatronWriter:
    """Write documents as `PREFIX.bin` + `PREFIX.idx` (one sequence per document), atomically.

    `add(tokens)` appends one document (eod already appended by the caller, as `--append-eod` does);
    `close()` writes the index and renames both files into place; until then neither exists under
    its final name.
    """

    def __init__(self, prefix: str, vocab_size: int) -> None:
        self.prefix = prefix
        self.dtype = token_dtype(vocab_size)
        self._tmp = {p: f"{p}.{os.getpid()}.tmp" for p in (bin_path(prefix), idx_path(prefix))}
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        self._bin = open(self._tmp[bin_path(prefix)], "wb")
        self._lengths: list[int] = []

    def add(self, tokens: np.ndarray) -> None:
        self._bin.write(np.asarray(tokens, dtype=self.dtype).tobytes())
        self._lengths.append(len(tokens))

    def close(self) -> None:
        self._bin.close()
        lengths = np.asarray(self._lengths, dtype=np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], dtype=np.int64, out=pointers[1:])
        pointers *= self.dtype.itemsize
        documents = np.arange(len(lengths) + 1, dtype=np.int64)
        with open(self._tmp[idx_path(self.prefix)], "wb") as f:
            f.write(_HEADER.pack(INDEX_MAGIC, INDEX_VERSION, CODE_OF_DTYPE[self.dtype], len(lengths), len(documents)))
            f.write(lengths.tobytes())
            f.write(pointers.tobytes())
            f.write(documents.tobytes())
        for final, tmp in self._tmp.items():
            os.replace(tmp, final)

    def abort(self) -> None:
        self._bin.close()
        for tmp in self._tmp.values():
            if os.path.exists(tmp):
                os.remove(tmp)
