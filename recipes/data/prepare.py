"""`python -m recipes.data.prepare`: token shards (Megatron .bin/.idx or MindRecord) from JSONL or the built-in corpus.

    python -m recipes.data.prepare --format megatron --out data/tiny                  # the built-in corpus
    python -m recipes.data.prepare --format mindrecord --out data/web --input web.jsonl --tokenizer-model tok.model
    python -m recipes.data.prepare --format megatron --record data/ext/web_text_document --tokenizer-model tok.model

Writes under --out, then prints the `data:` section that trains on it:

    train_00000.bin + .idx          (mindrecord: train_00000.mindrecord + .db), a new shard every
                                    --shard-tokens tokens; documents in input order, eod appended
    val_00000...                    the held-out split (--num-val-documents)
    <shard>.tokenizer.json          per shard: the tokenizer's sha256, vocab size and special ids, the
                                    shard's document / token counts and largest id (checked by the run)
    tokenizer.model                 a copy of the tokenizer

The split and the tokenizer are exactly those of the same settings as `data.source: jsonl` (for
`--input FILE`) or `synthetic` (for `--input builtin`): the same seeded held-out pick, the same
tokenizer (given, or trained and cached the same way), so a recipe moved from JSONL to shards trains
on the same documents (tested: same losses). JSONL is streamed (two passes: count, then write);
training a tokenizer on it, when none is given, holds its text in memory as `data.source: jsonl`
does, so give `--tokenizer-model` for corpora beyond memory.

`--record PATH...` writes only the tokenizer record of shards made elsewhere (Megatron-LM's
preprocess_data.py, MindFormers' converters), after reading every id and checking it against the
tokenizer: the run refuses shards without a record.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import time

import numpy as np

from recipes.cli import run_command
from recipes.data.config import PRETOKENIZED, DataConfig
from recipes.data.dataset import corpus_texts, load_tokenizer
from recipes.data.jsonl import file_sha256, held_out_mask, jsonl_texts, no_documents
from recipes.data.megatron import MegatronWriter
from recipes.data.mindrecord import MindRecordWriter
from recipes.data.shards import open_reader, record_path, scan_shard, write_record
from recipes.data.synthetic import TASKS
from recipes.data.tokenizer import Tokenizer

ENCODE_BATCH = 1024  # documents tokenized per call
DEFAULTS = DataConfig()


class SplitWriter:
    """The shards of one split: a new shard every `shard_tokens` tokens, each with its tokenizer record."""

    def __init__(self, fmt: str, out: str, split: str, tokenizer: Tokenizer, shard_tokens: int, record_tokens: int,
                 made_by: dict) -> None:
        self.fmt, self.out, self.split, self.tokenizer = fmt, out, split, tokenizer
        self.shard_tokens, self.record_tokens, self.made_by = shard_tokens, record_tokens, made_by
        self.paths: list[str] = []
        self.documents = self.tokens = 0
        self._writer = None

    def _open(self) -> None:
        name = os.path.join(self.out, f"{self.split}_{len(self.paths):05d}")
        path = name if self.fmt == "megatron" else f"{name}.mindrecord"
        self._writer = (MegatronWriter(path, self.tokenizer.vocab_size) if self.fmt == "megatron"
                        else MindRecordWriter(path, self.record_tokens))
        self.paths.append(path)
        self._counts = [0, 0, -1]  # documents, tokens, max id of the open shard

    def add(self, ids: list[int]) -> None:
        if self._writer is None:
            self._open()
        tokens = np.asarray(ids + [self.tokenizer.eod_id], dtype=np.int64)
        self._writer.add(tokens)
        self._counts[0] += 1
        self._counts[1] += len(tokens)
        self._counts[2] = max(self._counts[2], int(tokens.max()))
        if self._counts[1] >= self.shard_tokens:
            self._close_shard()

    def _close_shard(self) -> None:
        self._writer.close()
        documents, tokens, max_id = self._counts
        write_record(self.paths[-1], self.fmt, self.tokenizer, documents, tokens, max_id, self.made_by)
        self.documents += documents
        self.tokens += tokens
        self._writer = None

    def close(self) -> None:
        if self._writer is not None:
            self._close_shard()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()


def _documents(cfg: DataConfig, tokenizer: Tokenizer):
    """(is_held_out, token ids) of every document, in input order, tokenized in batches."""
    if cfg.source == "synthetic":
        for split in ("train", "val") if cfg.num_val_documents else ("train",):
            texts = corpus_texts(cfg, split)
            for i in range(0, len(texts), ENCODE_BATCH):
                for ids in tokenizer.encode_batch(texts[i : i + ENCODE_BATCH]):
                    yield split == "val", ids
        return
    texts = jsonl_texts(cfg.path, cfg.skip_bad_lines)
    n = sum(1 for _ in texts)
    if n == 0:
        raise no_documents(cfg.path)
    held = held_out_mask(n, cfg.num_val_documents, cfg.seed, cfg.path) if cfg.num_val_documents else np.zeros(n, bool)
    chunk: list[str] = []
    done = 0
    for text in texts:
        chunk.append(text)
        if len(chunk) == ENCODE_BATCH:
            for ids in tokenizer.encode_batch(chunk):
                yield bool(held[done]), ids
                done += 1
            chunk = []
    for ids in tokenizer.encode_batch(chunk):
        yield bool(held[done]), ids
        done += 1


def _check_out(fmt: str, out: str, splits: list[str], overwrite: bool) -> None:
    existing = sorted(f for split in splits for f in glob.glob(os.path.join(out, f"{split}_[0-9]*")))
    if existing and not overwrite:
        raise ValueError(f"--out {out}: already holds {os.path.basename(existing[0])}; choose another --out or "
                         "pass --overwrite to replace its shards")
    for f in existing:
        os.remove(f)


def prepare(fmt: str, out: str, cfg: DataConfig, shard_tokens: int = 1 << 30, record_tokens: int = 4097,
            overwrite: bool = False, log=print) -> dict:
    """Write the train (and val) shards of `cfg`'s corpus under `out`; returns a summary."""
    if fmt not in PRETOKENIZED:
        raise ValueError(f"--format: {fmt!r} is not a shard format; use one of {', '.join(PRETOKENIZED)}")
    if shard_tokens < 1:
        raise ValueError(f"--shard-tokens: {shard_tokens} must be >= 1; use e.g. 1073741824")
    cfg.validate()
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(cfg)
    os.makedirs(out, exist_ok=True)
    splits = ["train", "val"] if cfg.num_val_documents else ["train"]
    _check_out(fmt, out, splits, overwrite)
    made_by = {"tool": "python -m recipes.data.prepare", "seed": cfg.seed, "num_val_documents": cfg.num_val_documents}
    if cfg.source == "jsonl":
        made_by.update(input=cfg.path, input_sha256=file_sha256(cfg.path))
    else:
        made_by.update(input="builtin", num_documents=cfg.num_documents, tasks=list(cfg.tasks))
    writers = {s: SplitWriter(fmt, out, s, tokenizer, shard_tokens, record_tokens, {**made_by, "split": s})
               for s in splits}
    try:
        for held_out, ids in _documents(cfg, tokenizer):
            writers["val" if held_out else "train"].add(ids)
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    shutil.copyfile(tokenizer.model_path, os.path.join(out, "tokenizer.model"))
    summary = {s: {"shards": w.paths, "documents": w.documents, "tokens": w.tokens} for s, w in writers.items()}
    summary["tokenizer"] = os.path.join(out, "tokenizer.model")
    summary["seconds"] = time.perf_counter() - t0
    total = sum(w.tokens for w in writers.values())
    parts = [f"{s}: {len(w.paths)} shard(s), {w.documents} documents, {w.tokens} tokens" for s, w in writers.items()]
    log(f"wrote {', '.join(parts)} to {out} in {summary['seconds']:.1f} s ({total / summary['seconds']:.0f} tokens/s); "
        f"tokenizer {tokenizer.vocab_size} ids, sha256 {tokenizer.sha256[:12]}")
    log("data:")
    log(f"  source: {fmt}")
    log(f"  paths: [{os.path.join(out, 'train_*')}]")
    if "val" in writers:
        log(f"  val_paths: [{os.path.join(out, 'val_*')}]")
    log(f"  num_val_documents: {cfg.num_val_documents}")
    log(f"  tokenizer_model: {summary['tokenizer']}")
    return summary


def record(fmt: str, paths: list[str], tokenizer_model: str, overwrite: bool = False, log=print) -> list[str]:
    """Write the tokenizer record of existing shards after checking every id against the tokenizer."""
    if fmt not in PRETOKENIZED:
        raise ValueError(f"--format: {fmt!r} is not a shard format; use one of {', '.join(PRETOKENIZED)}")
    if not tokenizer_model or not os.path.isfile(tokenizer_model):
        raise ValueError(f"--tokenizer-model: {tokenizer_model or '(not given)'}: file not found; --record needs "
                         "the sentencepiece model the shards were made with")
    tokenizer = Tokenizer(tokenizer_model)
    written = []
    for path in paths:
        if os.path.exists(record_path(path)) and not overwrite:
            raise ValueError(f"{record_path(path)}: exists; pass --overwrite to replace it")
        reader = open_reader(fmt, path)
        scan = scan_shard(fmt, reader, tokenizer.eod_id)
        if scan["min_id"] < 0 or scan["max_id"] >= tokenizer.vocab_size:
            bad = scan["min_id"] if scan["min_id"] < 0 else scan["max_id"]
            raise ValueError(f"{reader.data_file}: token id {bad} is outside the vocabulary of {tokenizer_model} "
                             f"(ids 0..{tokenizer.vocab_size - 1}); it was made with another tokenizer")
        written.append(write_record(path, fmt, tokenizer, scan["raw_documents"], scan["raw_tokens"], scan["max_id"],
                                    {"tool": "python -m recipes.data.prepare --record", "input": "existing shard"}))
        log(f"{written[-1]}: {scan['raw_documents']} documents, {scan['raw_tokens']} tokens, ids 0..{scan['max_id']}")
    return written


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m recipes.data.prepare", description=__doc__.splitlines()[0])
    p.add_argument("--format", required=True, choices=PRETOKENIZED, help="shard format to write")
    p.add_argument("--out", help="output directory (shards, tokenizer records, tokenizer.model)")
    p.add_argument("--input", default="builtin", help="a JSONL file of {\"text\": ...} lines, or builtin (default)")
    p.add_argument("--tokenizer-model", help="sentencepiece model to tokenize with (default: the one "
                   "data.source=jsonl|synthetic would train and cache for these settings)")
    p.add_argument("--vocab-size", type=int, default=DEFAULTS.vocab_size, help="when training the tokenizer")
    p.add_argument("--num-documents", type=int, default=DEFAULTS.num_documents, help="builtin: training documents")
    p.add_argument("--num-val-documents", type=int, default=DEFAULTS.num_val_documents,
                   help="held-out documents written as val_* shards (0: none)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="corpus generation and the held-out pick")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), help="builtin: task mix")
    p.add_argument("--max-examples-per-document", type=int, default=DEFAULTS.max_examples_per_document)
    p.add_argument("--skip-bad-lines", action="store_true", help="JSONL: skip malformed lines instead of stopping")
    p.add_argument("--cache-dir", default=DEFAULTS.cache_dir, help="where a trained tokenizer is cached")
    p.add_argument("--shard-tokens", type=int, default=1 << 30, help="start a new shard after this many tokens")
    p.add_argument("--record-tokens", type=int, default=4097,
                   help="mindrecord: tokens per record (MindFormers: seq_length + 1)")
    p.add_argument("--record", nargs="+", metavar="PATH", help="only write the tokenizer record of existing shards")
    p.add_argument("--overwrite", action="store_true", help="replace existing shards / records")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_command(lambda: _main(args), args.debug)


def _main(args) -> int:
    if args.record:
        record(args.format, args.record, args.tokenizer_model, args.overwrite)
        return 0
    if not args.out:
        raise ValueError("--out: required; give the directory to write the shards to")
    builtin = args.input == "builtin"
    cfg = DataConfig(source="synthetic" if builtin else "jsonl", path="" if builtin else args.input,
                     num_documents=args.num_documents, num_val_documents=args.num_val_documents,
                     tasks=tuple(args.tasks), max_examples_per_document=args.max_examples_per_document,
                     vocab_size=args.vocab_size, tokenizer_model=args.tokenizer_model, seed=args.seed,
                     skip_bad_lines=args.skip_bad_lines, cache_dir=args.cache_dir)
    prepare(args.format, args.out, cfg, args.shard_tokens, args.record_tokens, args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
