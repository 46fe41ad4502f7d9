"""Pre-tokenized sources (`data.source: megatron | mindrecord`): token shards streamed into packed rows, mixed.

    shard --one full scan (cached)--> document index --place_documents (cached)--> placement
    stream position --mixture--> (source, position in source) --ShuffledOrder--> row --fill_rows--> batch

Sources. Each entry of `data.paths` is a source: one shard (a Megatron prefix, a MindRecord file) or
a glob pattern whose shards are read end to end in sorted order. `data.weights` mixes the sources.

Documents. A Megatron document is what its .idx says; a MindRecord stream is split at every eod
(`recipes.data.mindrecord`). A trailing eod is dropped and the packer appends one, so shards with or
without `--append-eod` give the same rows; empty documents are skipped, as `pack_documents` does.
Rows are packed per source by the one packer (`recipes.data.packing`): the same segment ids,
position ids, loss mask and eod targets as the in-memory sources, and for the same documents the
same rows (a test trains on JSONL and on both shard formats and gets the same losses).

Checks, each a one-line ValueError naming the file: the tokenizer record next to every shard
(`<path>.tokenizer.json`, written by `recipes.data.prepare`) must name the run's tokenizer (sha256)
and agree with the shard's document and token counts; every id must be inside the run's vocabulary;
a truncated or inconsistent file is refused by its reader.

Order. Stream position p belongs to source `mixture.locate(p)`: weights are rounded to integer
counts k_i per period of MIX_PERIOD positions and spread over the period by the largest-deficit rule
(Megatron's blending rule), so position p of period t is position t*k_i + (its rank in the period)
of source i. Inside a source, rows follow `ShuffledOrder` with seed `seed + SOURCE_SEED_STRIDE * i`
(an epoch-by-epoch permutation). Everything is a pure function of (seed, position): `--resume` is
exact. With one path the stream is exactly the in-memory sources' (`PackedDataset`) order.

Memory and caching. The scan reads each shard once, sequentially, in bounded chunks (Megatron: 16M
tokens; MindRecord: one record); its result (two int64 per document, plus the record offsets of a
MindRecord file) and each source's placement (four int64 per piece, one per row) are cached under
`data.cache_dir/shards/`, keyed by the files' paths, sizes and mtimes, and memory-mapped on load.
A batch then reads only its rows' documents: memory-mapped slices (Megatron) or one `MindDataset`
random-access read per source and block of rows (MindRecord). Besides those arrays, each source
keeps one int32 permutation of its rows per epoch in use.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from recipes.data.config import DataConfig
from recipes.data.megatron import MegatronShard
from recipes.data.mindrecord import MindRecordShard
from recipes.data.order import ShuffledOrder
from recipes.data.packing import BATCH_KEYS, PACKER_VERSION, Placement, fill_rows, place_documents
from recipes.data.storage import atomic_directory, digest
from recipes.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

INDEX_VERSION = 1  # bump when the cached document index changes
RECORD_SUFFIX = ".tokenizer.json"  # the tokenizer record next to each shard: <path><suffix>
RECORD_VERSION = 1
MIX_PERIOD = 10_000  # weights are honoured to 1/MIX_PERIOD
SOURCE_SEED_STRIDE = 1_000_003  # source i shuffles with seed + stride * i (source 0: the plain seed)
BLOCK_ROWS = 128  # rows read per random-access call (amortises MindDataset's per-call cost)
_PLACEMENT_FIELDS = ("row_ptr", "doc", "start", "take", "col")


# --------------------------------------------------------------------------------------------------
# Tokenizer record


def record_path(shard_path: str) -> str:
    return f"{shard_path}{RECORD_SUFFIX}"


def tokenizer_fields(tokenizer: Tokenizer) -> dict:
    """What identifies a tokenizer: its model file's sha256, size and the special ids."""
    return {"sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size, "file": tokenizer.model_path.name,
            "pad_id": tokenizer.pad_id, "unk_id": tokenizer.unk_id, "bos_id": tokenizer.bos_id,
            "eod_id": tokenizer.eod_id, "user_id": tokenizer.user_id, "assistant_id": tokenizer.assistant_id}


def write_record(shard_path: str, fmt: str, tokenizer: Tokenizer, documents: int, tokens: int, max_id: int,
                 made_by: dict) -> str:
    """Write `<shard_path>.tokenizer.json` (atomically): format, tokenizer, counts, provenance."""
    record = {"record_version": RECORD_VERSION, "format": fmt, "tokenizer": tokenizer_fields(tokenizer),
              "documents": documents, "tokens": tokens, "max_id": max_id, "made_by": made_by}
    path = record_path(shard_path)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path


def read_record(shard_path: str, fmt: str) -> dict:
    path = record_path(shard_path)
    fix = (f"write it with `python -m recipes.data.prepare --record {shard_path} --format {fmt} "
           "--tokenizer-model <the model the shard was made with>` or re-run prepare")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: tokenizer record not found, so the shard's tokenizer cannot be checked; {fix}")
    try:
        record = json.loads(Path(path).read_text())
        _ = record["format"], record["tokenizer"]["sha256"], record["documents"], record["tokens"]  # required
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a tokenizer record ({type(err).__name__}: {err}); {fix}") from None
    if record.get("format") != fmt:
        raise ValueError(f"{path}: describes a {record.get('format')} shard, data.source is {fmt}; "
                         f"set data.source={record.get('format')} or point data.paths at {fmt} shards")
    return record


# --------------------------------------------------------------------------------------------------
# One shard: reader + cached document index


@dataclass
class ShardIndex:
    """What the full scan of a shard found (cached): documents and id range."""

    key: str
    doc_start: np.ndarray  # int64 [D] token offset of each non-empty document
    doc_len: np.ndarray  # int64 [D] its tokens, without the trailing eod
    record_starts: np.ndarray | None  # MindRecord: int64 [R+1] token offset of each record
    raw_documents: int  # documents in the file, empty ones included (what the record counts)
    raw_tokens: int  # tokens in the file, eods included
    min_id: int
    max_id: int


def _mapped(path: Path) -> np.ndarray:
    """A cached .npy array, memory-mapped, as a plain ndarray view (cheaper to slice than np.memmap)."""
    return np.load(path, mmap_mode="r").view(np.ndarray)


def _file_state(paths: list[str]) -> list:
    return [[os.path.realpath(p), os.path.getsize(p), os.stat(p).st_mtime_ns] for p in paths]


def open_reader(fmt: str, path: str) -> MegatronShard | MindRecordShard:
    """The format's reader of one shard (checks the files' structure)."""
    return MegatronShard(path) if fmt == "megatron" else MindRecordShard(path)


def scan_shard(fmt: str, reader, eod_id: int) -> dict:
    """Arrays and counts of the shard, from one sequential pass over its tokens."""
    lo, hi = np.iinfo(np.int64).max, -1
    if fmt == "megatron":
        starts, stops = reader.document_ranges()
        for chunk in reader.chunks():
            lo, hi = min(lo, int(chunk.min())), max(hi, int(chunk.max()))
        nonempty = stops > starts
        has_eod = np.zeros(len(starts), dtype=bool)
        has_eod[nonempty] = reader.gather(stops[nonempty] - 1) == eod_id
        record_starts = None
        raw_tokens = reader.num_tokens
    else:
        offsets, eods = [0], []
        for ids in reader.records():
            if len(ids):
                lo, hi = min(lo, int(ids.min())), max(hi, int(ids.max()))
            eods.append(np.flatnonzero(ids == eod_id) + offsets[-1])
            offsets.append(offsets[-1] + len(ids))
        raw_tokens = offsets[-1]
        stops = np.concatenate(eods).astype(np.int64) + 1 if eods else np.zeros(0, np.int64)
        has_eod = np.ones(len(stops), dtype=bool)
        if raw_tokens > (int(stops[-1]) if len(stops) else 0):  # tokens after the last eod: one more document
            stops, has_eod = np.append(stops, raw_tokens), np.append(has_eod, False)
        starts = np.concatenate([[0], stops[:-1]]).astype(np.int64)
        record_starts = np.asarray(offsets, dtype=np.int64)
    lengths = stops - starts - has_eod
    keep = lengths > 0
    return {"doc_start": starts[keep].astype(np.int64), "doc_len": lengths[keep].astype(np.int64),
            "record_starts": record_starts, "raw_documents": len(starts), "raw_tokens": int(raw_tokens),
            "min_id": int(lo) if hi >= 0 else 0, "max_id": int(hi)}


class Shard:
    """One shard of a source: its reader, its (cached) document index, checked against the tokenizer."""

    def __init__(self, fmt: str, path: str, tokenizer: Tokenizer, cache_dir: Path) -> None:
        self.fmt, self.path = fmt, path
        self.reader = open_reader(fmt, path)
        self.eod_id = tokenizer.eod_id
        self.index = self._load_index(cache_dir)
        self._check(tokenizer)

    def _load_index(self, cache_dir: Path) -> ShardIndex:
        key = digest({"index": INDEX_VERSION, "format": self.fmt, "files": _file_state(self.reader.files),
                      "eod_id": self.eod_id})
        entry = cache_dir / "shards" / f"index-{key[:16]}"
        if not (entry / "meta.json").is_file():
            t0 = time.perf_counter()
            scan = scan_shard(self.fmt, self.reader, self.eod_id)
            with atomic_directory(entry) as tmp:
                np.save(tmp / "documents.npy", np.stack([scan["doc_start"], scan["doc_len"]], axis=1))
                if scan["record_starts"] is not None:
                    np.save(tmp / "records.npy", scan["record_starts"])
                meta = {k: scan[k] for k in ("raw_documents", "raw_tokens", "min_id", "max_id")}
                (tmp / "meta.json").write_text(json.dumps({**meta, "path": self.path, "format": self.fmt}))
            log.info("indexed %s: %d documents, %d tokens in %.1fs", self.path, scan["raw_documents"],
                     scan["raw_tokens"], time.perf_counter() - t0)
        meta = json.loads((entry / "meta.json").read_text())
        documents = _mapped(entry / "documents.npy")
        records = np.load(entry / "records.npy") if (entry / "records.npy").is_file() else None
        return ShardIndex(key, documents[:, 0], documents[:, 1], records, meta["raw_documents"],
                          meta["raw_tokens"], meta["min_id"], meta["max_id"])

    def _check(self, tokenizer: Tokenizer) -> None:
        record = read_record(self.path, self.fmt)
        theirs, data_file, idx = record["tokenizer"], self.reader.data_file, self.index
        if theirs["sha256"] != tokenizer.sha256:
            raise ValueError(
                f"{data_file}: made with another tokenizer ({theirs.get('file')}, sha256 {theirs['sha256'][:12]}, "
                f"vocab {theirs.get('vocab_size')}; {record_path(self.path)}) than the run's {tokenizer.model_path} "
                f"(sha256 {tokenizer.sha256[:12]}, vocab {tokenizer.vocab_size}); set data.tokenizer_model to the "
                "model the shards were made with, or re-run prepare with this one")
        if (record["documents"], record["tokens"]) != (idx.raw_documents, idx.raw_tokens):
            raise ValueError(
                f"{data_file}: holds {idx.raw_documents} documents / {idx.raw_tokens} tokens, its record "
                f"{record_path(self.path)} says {record['documents']} / {record['tokens']}; the shard was "
                "truncated or replaced after prepare: re-copy it or re-run prepare")
        if idx.min_id < 0 or idx.max_id >= tokenizer.vocab_size:
            bad = idx.min_id if idx.min_id < 0 else idx.max_id
            raise ValueError(
                f"{data_file}: token id {bad} is outside the vocabulary of {tokenizer.model_path} "
                f"(ids 0..{tokenizer.vocab_size - 1}); the shard is corrupted or was made with another "
                "tokenizer: re-run prepare")

    @property
    def num_documents(self) -> int:
        return len(self.index.doc_len)

    def documents(self, local_ids: np.ndarray) -> list[np.ndarray]:
        """Documents `local_ids` of this shard as int32 token arrays, eod appended."""
        starts = self.index.doc_start[local_ids]
        lengths = self.index.doc_len[local_ids]
        if self.fmt == "megatron":
            pieces = [self.reader.tokens(int(s), int(s + n)) for s, n in zip(starts, lengths)]
        else:
            pieces = self._mindrecord_pieces(starts, lengths)
        out = []
        for piece in pieces:
            doc = np.empty(len(piece) + 1, dtype=np.int32)
            doc[:-1] = piece
            doc[-1] = self.eod_id
            out.append(doc)
        return out

    def _mindrecord_pieces(self, starts: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        bounds = self.index.record_starts
        first = np.searchsorted(bounds, starts, side="right") - 1
        last = np.searchsorted(bounds, starts + lengths - 1, side="right") - 1
        wanted = np.unique(np.concatenate([np.arange(a, b + 1) for a, b in zip(first, last)]))
        records = self.reader.read_records(wanted)
        pieces = []
        for s, n, a, b in zip(starts.tolist(), lengths.tolist(), first.tolist(), last.tolist()):
            stream = np.concatenate([records[r] for r in range(a, b + 1)])
            offset = s - int(bounds[a])
            pieces.append(stream[offset : offset + n])
        return pieces


# --------------------------------------------------------------------------------------------------
# A source: one entry of data.paths


def expand(fmt: str, path: str, key: str) -> list[str]:
    """The shard paths of one `data.paths` entry (a glob pattern expands, sorted)."""
    if not glob.has_magic(path):
        return [path]
    if fmt == "megatron":
        found = sorted(p[: -len(".idx")] for p in glob.glob(f"{path}.idx"))
    else:
        found = sorted(p for p in glob.glob(path) if not p.endswith((".db", RECORD_SUFFIX)) and not
                       os.path.basename(p).startswith("."))
    if not found:
        raise ValueError(f"{key}={path}: no {fmt} shard matches the pattern (cwd {os.getcwd()}); fix the path")
    return found


class Source:
    """The documents of one `data.paths` entry (its shards end to end), packed into rows."""

    def __init__(self, fmt: str, path: str, key: str, tokenizer: Tokenizer, seq_length: int, cache_dir: Path) -> None:
        self.path = path
        self.shards = [Shard(fmt, p, tokenizer, cache_dir) for p in expand(fmt, path, key)]
        self.seq_length = seq_length
        self.pad_id = tokenizer.pad_id
        counts = [s.num_documents for s in self.shards]
        self.doc_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # [K+1]
        self.placement = self._load_placement(cache_dir)
        self.num_rows = self.placement.num_rows

    @property
    def num_documents(self) -> int:
        return int(self.doc_offsets[-1])

    def _load_placement(self, cache_dir: Path) -> Placement:
        key = digest({"packer": PACKER_VERSION, "seq_length": self.seq_length,
                      "shards": [s.index.key for s in self.shards]})
        entry = cache_dir / "shards" / f"placement-{key[:16]}"
        if not (entry / "row_ptr.npy").is_file():
            t0 = time.perf_counter()
            lengths = np.concatenate([s.index.doc_len + 1 for s in self.shards]) if self.shards else np.zeros(0)
            placement = place_documents(lengths, self.seq_length)
            with atomic_directory(entry) as tmp:
                for name in _PLACEMENT_FIELDS:
                    np.save(tmp / f"{name}.npy", getattr(placement, name))
            log.info("packed %s: %d documents -> %d rows of %d in %.1fs", self.path, len(lengths),
                     placement.num_rows, self.seq_length, time.perf_counter() - t0)
        return Placement(*(_mapped(entry / f"{name}.npy") for name in _PLACEMENT_FIELDS))

    def documents(self, doc_ids: np.ndarray) -> dict[int, np.ndarray]:
        """{document id: tokens with eod} for (unique) source-wide document ids."""
        doc_ids = np.asarray(doc_ids, dtype=np.int64)
        shard_of = np.searchsorted(self.doc_offsets, doc_ids, side="right") - 1
        out: dict[int, np.ndarray] = {}
        for k in np.unique(shard_of):
            ids = doc_ids[shard_of == k]
            for d, doc in zip(ids.tolist(), self.shards[k].documents(ids - self.doc_offsets[k])):
                out[d] = doc
        return out

    def rows(self, row_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The five [len(row_ids), S] batch arrays of these rows (documents read on demand)."""
        ptr = self.placement.row_ptr
        needed = np.unique(np.concatenate([self.placement.doc[ptr[r] : ptr[r + 1]] for r in row_ids]))
        docs = self.documents(needed)
        return fill_rows(self.placement, row_ids, docs.__getitem__, self.seq_length, self.pad_id)


def open_sources(fmt: str, paths: tuple[str, ...], key: str, tokenizer: Tokenizer, seq_length: int,
                 cache_dir: Path) -> list[Source]:
    return [Source(fmt, p, f"{key}[{i}]", tokenizer, seq_length, cache_dir) for i, p in enumerate(paths)]


# --------------------------------------------------------------------------------------------------
# Mixing


class Mixture:
    """Which source each stream position reads: a pure function of the position (module docstring)."""

    def __init__(self, weights: list[float], names: list[str]) -> None:
        w = np.asarray(weights, dtype=np.float64)
        w = w / w.sum()
        period = 1 if len(w) == 1 else MIX_PERIOD
        exact = w * period
        counts = np.floor(exact).astype(np.int64)
        short = period - int(counts.sum())
        counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1  # largest remainders
        if (counts == 0).any():
            i = int(np.flatnonzero(counts == 0)[0])
            raise ValueError(f"data.weights: {names[i]} gets {w[i]:.2e} of the mix, below 1/{MIX_PERIOD}; "
                             "raise its weight or drop the path")
        taken = np.zeros(len(w), dtype=np.int64)
        self.source = np.empty(period, dtype=np.int64)  # [period] source of each position in the period
        self.rank = np.empty(period, dtype=np.int64)  # [period] its rank among that source's positions
        for q in range(period):
            i = int(np.argmax(counts * (q + 1) / period - taken))  # the source furthest behind its share
            self.source[q], self.rank[q] = i, taken[i]
            taken[i] += 1
        assert (taken == counts).all(), (taken, counts)
        self.period, self.counts, self.fractions = period, counts, w

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, position within that source) of stream `positions` (int64 arrays)."""
        t, q = np.divmod(np.asarray(positions, dtype=np.int64), self.period)
        source = self.source[q]
        return source, t * self.counts[source] + self.rank[q]


# --------------------------------------------------------------------------------------------------
# The streamed training split


class ShardDataset:
    """The training split of a pre-tokenized source: rows streamed from shards, resumable by position.

    Same interface as `PackedDataset`: `tokenizer`, `split`, `num_rows`, `seq_length`,
    `batches(batch_size, start, seed, num_batches)`, `eval_batches(...)`, `packing_stats()`.
    """

    def __init__(self, cfg: DataConfig, tokenizer: Tokenizer, cache_dir: Path) -> None:
        self.tokenizer = tokenizer
        self.split = "train"
        self.seq_length = cfg.seq_length
        self.default_seed = cfg.seed
        self.sources = open_sources(cfg.source, cfg.paths, "data.paths", tokenizer, cfg.seq_length, cache_dir)
        empty = [s.path for s in self.sources if s.num_rows == 0]
        if empty:
            raise ValueError(f"data.paths: {empty[0]} has no documents; remove it or re-run prepare")
        weights = list(cfg.weights) if cfg.weights else [s.num_rows for s in self.sources]
        self.mixture = Mixture(weights, [s.path for s in self.sources])
        # every call passes the seed (the trainer's), offset per source: see source_seed
        self.orders = [ShuffledOrder(s.num_rows, self.source_seed(cfg.seed, i)) for i, s in enumerate(self.sources)]
        self.num_rows = sum(s.num_rows for s in self.sources)
        self.cache_path = cache_dir / "shards"

    def __len__(self) -> int:
        return self.num_rows

    def sample_rows(self, start: int, count: int, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(source, row) of stream positions start .. start+count-1."""
        seed = self.default_seed if seed is None else seed
        source, local = self.mixture.locate(np.arange(start, start + count, dtype=np.int64))
        rows = np.empty(count, dtype=np.int64)
        for i in np.unique(source):
            sel = source == i
            rows[sel] = self.orders[i].rows_at(local[sel], self.source_seed(seed, int(i)))
        return source, rows

    @staticmethod
    def source_seed(seed: int, i: int) -> int:
        """Source i shuffles with its own seed; source 0's is the plain seed (one path = PackedDataset's order)."""
        return seed + SOURCE_SEED_STRIDE * i

    def read(self, source: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The batch arrays of (source, row) pairs, in their order."""
        if len(self.sources) == 1:
            return self.sources[0].rows(rows)
        out = {k: None for k in BATCH_KEYS}
        for i in np.unique(source):
            sel = np.flatnonzero(source == i)
            part = self.sources[i].rows(rows[sel])
            for k in BATCH_KEYS:
                if out[k] is None:
                    out[k] = np.empty((len(rows), self.seq_length), dtype=part[k].dtype)
                out[k][sel] = part[k]
        return out

    def batches(self, batch_size: int, start: int = 0, seed: int | None = None,
                num_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Batches of the mixed, shuffled stream from position `start` (as `PackedDataset.batches`)."""
        if batch_size < 1:
            raise ValueError(f"batch_size: {batch_size} must be >= 1")
        if start < 0:
            raise ValueError(f"start: {start} must be >= 0 (a global sample position)")
        return self._stream(batch_size, start, seed, num_batches)

    def _stream(self, batch_size: int, position: int, seed: int | None,
                num_batches: int | None) -> Iterator[dict[str, np.ndarray]]:
        per_read = max(1, BLOCK_ROWS // batch_size)  # batches fetched per read
        produced = 0
        while num_batches is None or produced < num_batches:
            n = per_read if num_batches is None else min(per_read, num_batches - produced)
            block = self.read(*self.sample_rows(position, n * batch_size, seed))
            for b in range(n):
                yield {k: block[k][b * batch_size : (b + 1) * batch_size] for k in BATCH_KEYS}
            position += n * batch_size
            produced += n

    def eval_batches(self, batch_size: int, num_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """The rows in stored order (source by source), each once; the last batch padded with
        all-padding rows (loss_mask 0), as `PackedDataset.eval_batches`."""
        source = np.concatenate([np.full(s.num_rows, i) for i, s in enumerate(self.sources)])
        rows = np.concatenate([np.arange(s.num_rows) for s in self.sources])
        total = math.ceil(self.num_rows / batch_size)
        total = total if num_batches is None else min(total, num_batches)
        for b in range(total):
            sel = slice(b * batch_size, min((b + 1) * batch_size, self.num_rows))
            batch = self.read(source[sel], rows[sel])
            short = batch_size - len(rows[sel])
            if short:
                for k in BATCH_KEYS:
                    fill = self.tokenizer.pad_id if k == "input_ids" else 0
                    batch[k] = np.concatenate([batch[k], np.full((short, self.seq_length), fill, batch[k].dtype)])
            yield batch

    def packing_stats(self) -> dict:
        """Counts from the indexes (no token is read): documents, rows, tokens, targets, fill, sources."""
        docs = sum(s.num_documents for s in self.sources)
        targets = sum(int(sh.index.doc_len.sum()) for s in self.sources for sh in s.shards)
        pieces = sum(len(s.placement.doc) for s in self.sources)
        tokens = targets + docs
        slots = self.num_rows * self.seq_length
        return {
            "num_documents": docs, "num_rows": self.num_rows, "num_tokens": tokens, "num_targets": targets,
            "num_pieces": pieces, "pieces_per_row": pieces / self.num_rows, "non_padding_fraction": tokens / slots,
            "skipped_lines": 0, "tokenizer_vocab_size": self.tokenizer.vocab_size,
            "sources": [{"path": s.path, "shards": len(s.shards), "documents": s.num_documents, "rows": s.num_rows,
                         "weight": float(f)} for s, f in zip(self.sources, self.mixture.fractions)],
        }


class ValDocuments:
    """The held-out split of a pre-tokenized source: the first `num_val_documents` documents of
    `val_paths`, in path order; `fingerprint` says what determines them (the rows cache key)."""

    def __init__(self, cfg: DataConfig, tokenizer: Tokenizer, cache_dir: Path) -> None:
        self.count = cfg.num_val_documents
        self.sources = open_sources(cfg.source, cfg.val_paths, "data.val_paths", tokenizer, cfg.seq_length, cache_dir)
        available = sum(s.num_documents for s in self.sources)
        if available < self.count:
            raise ValueError(f"data.num_val_documents={self.count}: data.val_paths hold only {available} documents; "
                             f"set data.num_val_documents to at most {available} or add held-out shards")
        self.fingerprint = {"source": cfg.source, "num_val_documents": self.count,
                            "shards": [[sh.index.key for sh in s.shards] for s in self.sources]}

    def read(self) -> list[np.ndarray]:
        """The documents' tokens (without eod: `pack_documents` appends it)."""
        docs: list[np.ndarray] = []
        for s in self.sources:
            want = min(self.count - len(docs), s.num_documents)
            fetched = s.documents(np.arange(want))
            docs += [fetched[d][:-1] for d in range(want)]
        return docs
