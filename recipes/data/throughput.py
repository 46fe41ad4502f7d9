"""`python -m recipes.data.throughput`: how fast token shards stream into packed rows, at a realistic size.

    python -m recipes.data.throughput --format megatron --tokens 200000000 --seq-length 4096 --batch-size 32

Writes (once; reused while it exists) a shard of `--tokens` token ids under `--dir` with the
format's writer, then measures, in one process:

  * index  : the first open: the full scan (id range, documents) and the packing placement, both cached;
  * stream : rows/s and tokens/s of `ShardDataset.batches` (the trainer's call) for `--seconds`,
             from a fresh position, so every batch reads its rows' documents from the shard.

The shard imitates pre-training text after tokenization: documents of log-normally distributed
length (median `--median-doc` tokens, a long tail), ids stored as int32 (a 153,376-id vocabulary
such as Pangu Pro MoE's needs int32 in Megatron's choice) but drawn below the built-in tokenizer's
vocabulary, which the run checks them against. Reading cost depends on tokens and pieces per row,
not on the id values. The files are read through the page cache as the OS keeps it (they were just
written): on a cluster, a network file system adds its own latency, amortised over BLOCK_ROWS rows
per read.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from recipes.cli import run_command
from recipes.data.config import PRETOKENIZED, DataConfig
from recipes.data.dataset import build_dataset, load_tokenizer
from recipes.data.megatron import MegatronWriter
from recipes.data.mindrecord import MindRecordWriter
from recipes.data.shards import record_path, write_record

STORED_VOCAB = 153_376  # Pangu Pro MoE's vocabulary: int32 token files


def make_shard(fmt: str, out: str, tokens: int, median_doc: int, tokenizer, seed: int = 0) -> str:
    """A train shard of about `tokens` ids (and a 64-document val shard) under `out`; returns the train path."""
    rng = np.random.default_rng(seed)
    paths = {}
    for split, budget in (("train", tokens), ("val", 64 * median_doc)):
        path = os.path.join(out, f"{split}_00000" + (".mindrecord" if fmt == "mindrecord" else ""))
        paths[split] = path
        if os.path.exists(record_path(path)):
            continue
        writer = MegatronWriter(path, STORED_VOCAB) if fmt == "megatron" else MindRecordWriter(path, 4097)
        written = documents = 0
        while written < budget:
            n = int(min(max(1, rng.lognormal(np.log(median_doc), 1.0)), 64 * median_doc))
            doc = rng.integers(4, tokenizer.vocab_size, size=n + 1, dtype=np.int64)
            doc[-1] = tokenizer.eod_id
            writer.add(doc)
            written += n + 1
            documents += 1
        writer.close()
        write_record(path, fmt, tokenizer, documents, written, tokenizer.vocab_size - 1,
                     {"tool": "python -m recipes.data.throughput", "seed": seed})
    return paths["train"]


def measure(fmt: str, out: str, seq_length: int, batch_size: int, seconds: float, cache_dir: str, tokenizer) -> dict:
    train = "train_00000" + (".mindrecord" if fmt == "mindrecord" else "")
    val = train.replace("train", "val")
    cfg = DataConfig(source=fmt, paths=(os.path.join(out, train),), val_paths=(os.path.join(out, val),),
                     num_val_documents=8, tokenizer_model=str(tokenizer.model_path), seq_length=seq_length,
                     cache_dir=cache_dir)
    if fmt == "mindrecord":
        import mindspore.dataset  # noqa: F401 (its ~4 s import is not reading time)
    t0 = time.perf_counter()
    ds = build_dataset(cfg, "train")
    index_s = time.perf_counter() - t0
    stats = ds.packing_stats()
    stream = ds.batches(batch_size, start=12_345, seed=1)
    next(stream)  # the first read opens the files
    rows, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        rows += next(stream)["input_ids"].shape[0]
    elapsed = time.perf_counter() - t0
    return {"format": fmt, "seq_length": seq_length, "batch_size": batch_size, "tokens": stats["num_tokens"],
            "documents": stats["num_documents"], "rows": stats["num_rows"], "pieces_per_row": stats["pieces_per_row"],
            "index_s": index_s, "rows_per_s": rows / elapsed, "tokens_per_s": rows * seq_length / elapsed}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.data.throughput", description=__doc__.splitlines()[0])
    p.add_argument("--format", required=True, choices=PRETOKENIZED)
    p.add_argument("--tokens", type=int, default=200_000_000, help="tokens in the train shard")
    p.add_argument("--median-doc", type=int, default=600, help="median document length in tokens")
    p.add_argument("--seq-length", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=32, help="rows per batch (the trainer's global batch)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "pangu_throughput"),
                   help="where the shard is written (reused if present)")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)

    def body() -> int:
        out = os.path.join(args.dir, f"{args.format}-{args.tokens}-{args.median_doc}")
        cache_dir = os.path.join(args.dir, "cache")
        tokenizer = load_tokenizer(DataConfig(cache_dir=cache_dir))
        t0 = time.perf_counter()
        make_shard(args.format, out, args.tokens, args.median_doc, tokenizer)
        print(f"shard {out}: ready in {time.perf_counter() - t0:.1f} s", flush=True)
        r = measure(args.format, out, args.seq_length, args.batch_size, args.seconds, cache_dir, tokenizer)
        print(f"{r['format']}: {r['tokens']:,} tokens, {r['documents']:,} documents -> {r['rows']:,} rows of "
              f"{r['seq_length']} ({r['pieces_per_row']:.2f} pieces/row); open + index {r['index_s']:.1f} s; "
              f"stream {r['rows_per_s']:,.0f} rows/s = {r['tokens_per_s'] / 1e6:.1f} M tokens/s "
              f"(batches of {r['batch_size']})")
        return 0

    return run_command(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
