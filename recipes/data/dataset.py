"""`build_dataset`: corpus → tokenizer → packed rows → MindRecord cache → `PackedDataset` batches.

Caching. Two kinds of entries live in `cfg.cache_dir`, each named by a SHA-256 of exactly what
determines its content, so an entry is built once and reused until an input changes:

    tokenizer-<key>.model      key: trainer version, vocab_size, training-corpus fingerprint
                               (the built-in sources synthetic and sft share ONE tokenizer per
                               vocab_size, trained on a fixed reference corpus of the task family,
                               so a pretraining checkpoint and its SFT stage always agree on ids
                               whatever their seeds, sizes or task mixes)
    rows-<split>-<key>/        key: packer version, split, seq_length, corpus fingerprint,
                               SHA-256 of the tokenizer model file

A corpus fingerprint is the generator config (synthetic) or the file's SHA-256 plus the split
settings (jsonl). On a warm cache nothing is generated, parsed, trained or packed: only the
tokenizer file and the rows are read. `BUILD_EVENTS` counts real trainings and writes (tests use it).

Batch order (`recipes.data.order`). Samples form one endless stream: global position p is row
perm_e[p mod N] of epoch e = p div N, where perm_e is the permutation drawn from
`numpy.random.default_rng(seed + e)`. A batch is the next `batch_size` positions (crossing epoch
boundaries), so a trainer that stores its position as one int and restarts with
`batches(B, start=position)` sees exactly the batches an uninterrupted run would have seen.

Token shards (source megatron | mindrecord) are streamed instead: `recipes.data.shards`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from recipes.data.config import PRETOKENIZED, DataConfig
from recipes.data.jsonl import JsonlTexts, check_exists, file_sha256, held_out_mask, read_jsonl_texts
from recipes.data.packing import BATCH_KEYS, PACKER_VERSION, pack_documents, packing_summary
from recipes.data import sft
from recipes.data.order import ShuffledOrder
from recipes.data.shards import ShardDataset, ValDocuments
from recipes.data.storage import digest, read_rows, write_rows
from recipes.data.synthetic import GENERATOR_VERSION, TASKS, generate_corpus
from recipes.data.tokenizer import TRAINER_VERSION, Tokenizer, open_tokenizer, train_tokenizer

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("train", "val")
JSONL_CHARACTER_COVERAGE = 0.9995  # rare characters of user text become <unk> rather than pieces
BUILTIN = ("synthetic", "sft")  # sources drawn from the built-in task family
# The built-in family's tokenizer corpus: fixed, so its tokenizer depends on vocab_size only.
BUILTIN_TOKENIZER_CORPUS = dict(num_documents=4000, seed=0, split="tokenizer", tasks=TASKS, max_examples_per_document=4)

# Counts of expensive work actually done in this process: "tokenizer_trained", "rows_written".
BUILD_EVENTS: collections.Counter[str] = collections.Counter()


def resolve_cache_dir(cache_dir: str) -> Path:
    """`cache_dir` as an absolute path; relative paths are under the repo root, not the cwd."""
    path = Path(cache_dir).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


class _Corpus:
    """The texts of both splits, produced lazily (a warm cache never needs them)."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self._texts: dict[str, list[str]] = {}
        self._conversations: dict[str, list[sft.Conversation]] = {}
        self._file_sha256: str | None = None
        self.skipped_lines = 0

    def fingerprint(self, split: str) -> dict:
        """Everything that determines the texts of `split` (JSON-serialisable, hashed into keys)."""
        cfg = self.cfg
        if cfg.source == "synthetic":
            fp = {
                "source": "synthetic",
                "generator": GENERATOR_VERSION,
                "seed": cfg.seed,
                "num_documents": cfg.num_documents,
                "tasks": list(cfg.tasks),
                "max_examples_per_document": cfg.max_examples_per_document,
            }
            if split == "val":  # the train split does not depend on it
                fp["num_val_documents"] = cfg.num_val_documents
            return fp
        if cfg.source == "sft":
            fp = {
                "source": "sft",
                "generator": GENERATOR_VERSION,
                "sft": sft.SFT_VERSION,
                "seed": cfg.seed,
                "num_documents": cfg.num_documents,
                "tasks": list(cfg.tasks),
            }
            if split == "val":
                fp["num_val_documents"] = cfg.num_val_documents
            return fp
        if self._file_sha256 is None:
            self._file_sha256 = file_sha256(cfg.path)
        return {
            "source": cfg.source,
            "sha256": self._file_sha256,
            "skip_bad_lines": cfg.skip_bad_lines,
            "num_val_documents": cfg.num_val_documents,
            "seed": cfg.seed,
        }

    def tokenizer_fingerprint(self) -> dict:
        """What determines the trained tokenizer: the fixed reference corpus for built-in sources."""
        if self.cfg.source in BUILTIN:
            return {"source": "builtin", "generator": GENERATOR_VERSION, **BUILTIN_TOKENIZER_CORPUS, "tasks": list(TASKS)}
        return self.fingerprint("train")

    def tokenizer_texts(self) -> list[str]:
        if self.cfg.source in BUILTIN:
            return generate_corpus(**BUILTIN_TOKENIZER_CORPUS)
        if self.cfg.source == "chat_jsonl":
            return [sft.render(c.messages) for c in self.conversations("train")]
        return self.texts("train")

    def texts(self, split: str) -> list[str]:
        if split not in self._texts:
            if self.cfg.source == "synthetic":
                self._synthetic(split)
            else:
                self._jsonl()
        return self._texts[split]

    def conversations(self, split: str) -> list[sft.Conversation]:
        """The conversations of `split` (chat sources only)."""
        cfg = self.cfg
        if split not in self._conversations:
            if cfg.source == "sft":
                if split == "train":
                    self._conversations["train"] = sft.builtin_conversations(cfg.num_documents, cfg.seed, "train", cfg.tasks)
                else:
                    exclude = {c.messages[0][1] for c in self.conversations("train")}
                    self._conversations["val"] = sft.builtin_conversations(
                        cfg.num_val_documents, cfg.seed, "val", cfg.tasks, exclude_prompts=exclude
                    )
            else:
                self._conversations, self.skipped_lines = sft.jsonl_conversations(
                    cfg.path, cfg.skip_bad_lines, cfg.num_val_documents, cfg.seed
                )
        return self._conversations[split]

    def _synthetic(self, split: str) -> None:
        cfg = self.cfg
        common = dict(seed=cfg.seed, tasks=cfg.tasks, max_examples_per_document=cfg.max_examples_per_document)
        if split == "train":
            self._texts["train"] = generate_corpus(cfg.num_documents, split="train", **common)
        else:
            exclude = set(self.texts("train"))  # a held-out document never equals a training one
            self._texts["val"] = generate_corpus(cfg.num_val_documents, split="val", exclude=exclude, **common)

    def _jsonl(self) -> None:
        cfg = self.cfg
        data: JsonlTexts = read_jsonl_texts(cfg.path, skip_bad_lines=cfg.skip_bad_lines)
        self.skipped_lines = data.skipped_lines
        held_out = held_out_mask(len(data.texts), cfg.num_val_documents, cfg.seed, cfg.path)
        self._texts["train"] = [t for t, h in zip(data.texts, held_out) if not h]
        self._texts["val"] = [t for t, h in zip(data.texts, held_out) if h]


def _get_tokenizer(cfg: DataConfig, cache_dir: Path, corpus: _Corpus) -> Tokenizer:
    """The user's model if given, else the cached one for this corpus, training it on a miss."""
    if cfg.tokenizer_model is not None:
        if not Path(cfg.tokenizer_model).is_file():
            raise ValueError(
                f"data.tokenizer_model={cfg.tokenizer_model}: file not found; "
                "give a sentencepiece .model file or leave data.tokenizer_model unset to train one"
            )
        return open_tokenizer(cfg.tokenizer_model)
    key = digest({"trainer": TRAINER_VERSION, "vocab_size": cfg.vocab_size, "corpus": corpus.tokenizer_fingerprint()})
    path = cache_dir / f"tokenizer-{key[:16]}.model"
    if path.is_file():
        return Tokenizer(path)
    t0 = time.perf_counter()
    coverage = 1.0 if cfg.source in BUILTIN else JSONL_CHARACTER_COVERAGE
    tokenizer = train_tokenizer(corpus.tokenizer_texts(), cfg.vocab_size, path, coverage, seed=cfg.seed)
    BUILD_EVENTS["tokenizer_trained"] += 1
    log.info("trained tokenizer %s (%d pieces) in %.1fs", path.name, tokenizer.vocab_size, time.perf_counter() - t0)
    return tokenizer


def load_tokenizer(cfg: DataConfig) -> Tokenizer:
    """The tokenizer `cfg` trains with: `data.tokenizer_model` if set, else the cached one of its
    corpus (trained now on a cold cache). What `build_dataset(cfg).tokenizer` is, without the rows."""
    cfg.validate()
    cache_dir = resolve_cache_dir(cfg.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    return _get_tokenizer(cfg, cache_dir, _Corpus(cfg))


def corpus_texts(cfg: DataConfig, split: str) -> list[str]:
    """The documents of `split` of a text source (synthetic | jsonl), as `build_dataset` packs them."""
    if cfg.source not in ("synthetic", "jsonl"):
        raise ValueError(f"data.source={cfg.source}: has no plain-text documents; use synthetic or jsonl")
    return _Corpus(cfg).texts(split)


class PackedDataset:
    """One split of packed rows in memory, with a resumable, seeded batch stream.

    Attributes: `tokenizer`, `split`, `num_rows`, `seq_length`, `cache_path` (the MindRecord entry),
    `rows` (the five [N, S] arrays of the batch contract).
    """

    def __init__(
        self, rows: dict[str, np.ndarray], meta: dict, tokenizer: Tokenizer, split: str, cache_path: Path, seed: int
    ) -> None:
        self.rows = rows
        self.meta = meta
        self.tokenizer = tokenizer
        self.split = split
        self.cache_path = cache_path
        self.default_seed = seed
        self.num_rows: int = int(rows["input_ids"].shape[0])
        self.seq_length: int = int(rows["input_ids"].shape[1])
        self.order = ShuffledOrder(self.num_rows, seed)

    def __len__(self) -> int:
        return self.num_rows

    def epoch_permutation(self, epoch: int, seed: int | None = None) -> np.ndarray:
        """Row order of `epoch`: the permutation drawn from default_rng(seed + epoch)."""
        return self.order.epoch_permutation(epoch, seed)

    def sample_rows(self, start: int, count: int, seed: int | None = None) -> np.ndarray:
        """Row indices of global sample positions start .. start+count-1 of the shuffled stream."""
        return self.order.sample_rows(start, count, seed)

    def batches(
        self, batch_size: int, start: int = 0, seed: int | None = None, num_batches: int | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        """Batches of the shuffled stream from global sample position `start` (endless by default).

        Batch k holds positions start + k*batch_size ... + batch_size - 1, so the position to store
        for resuming after k batches is `start + k * batch_size`. `seed` defaults to `DataConfig.seed`.
        Each value is a fresh [batch_size, S] array of the batch contract.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size: {batch_size} must be >= 1")
        if start < 0:
            raise ValueError(f"start: {start} must be >= 0 (a global sample position)")
        if self.num_rows == 0:
            raise ValueError(f"the {self.split} split has no rows; add documents or lower seq_length")
        return self._stream(batch_size, start, seed, num_batches)  # checks above run now, not at first next()

    def _stream(
        self, batch_size: int, position: int, seed: int | None, num_batches: int | None
    ) -> Iterator[dict[str, np.ndarray]]:
        produced = 0
        while num_batches is None or produced < num_batches:
            index_B = self.sample_rows(position, batch_size, seed)
            yield {k: self.rows[k][index_B] for k in BATCH_KEYS}
            position += batch_size
            produced += 1

    def eval_batches(self, batch_size: int, num_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """The rows in stored order, each once; the last batch is filled with all-padding rows
        (loss_mask 0) so every batch has the same shape (graph mode compiles one shape)."""
        total = math.ceil(self.num_rows / batch_size)
        total = total if num_batches is None else min(total, num_batches)
        pad_id = self.tokenizer.pad_id
        for b in range(total):
            index = np.arange(b * batch_size, min((b + 1) * batch_size, self.num_rows))
            batch = {k: self.rows[k][index] for k in BATCH_KEYS}
            short = batch_size - len(index)
            if short:
                for k in BATCH_KEYS:
                    fill = pad_id if k == "input_ids" else 0
                    filler = np.full((short, self.seq_length), fill, dtype=batch[k].dtype)
                    batch[k] = np.concatenate([batch[k], filler])
            yield batch

    def packing_stats(self) -> dict[str, float]:
        """num_documents, num_rows, num_tokens, num_targets, pieces_per_row, non_padding_fraction,
        skipped_lines, tokenizer_vocab_size (computed at build time, stored in the cache entry)."""
        return dict(self.meta["stats"])


def build_dataset(cfg: DataConfig, split: str = "train") -> PackedDataset | ShardDataset:
    """The packed `split` ("train" | "val") of `cfg`, from the cache or built (and cached) now.

    Token shards (source megatron | mindrecord): the training split streams from the shards
    (`ShardDataset`); the validation split is its first `num_val_documents` documents of
    `val_paths`, packed and cached like every other source's.
    """
    cfg.validate()
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not a split; use one of {', '.join(SPLITS)}")
    if split == "val" and cfg.num_val_documents == 0:
        raise ValueError("data.num_val_documents=0: there is no validation split; set it > 0 or skip evaluation")
    if cfg.source in ("jsonl", "chat_jsonl"):
        check_exists(cfg.path)
    cache_dir = resolve_cache_dir(cfg.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)

    corpus = _Corpus(cfg)
    tokenizer = _get_tokenizer(cfg, cache_dir, corpus)
    if cfg.source in ("sft", "chat_jsonl"):
        sft.check_chat_tokenizer(tokenizer)
    if cfg.source in PRETOKENIZED:
        if split == "train":
            return ShardDataset(cfg, tokenizer, cache_dir)
        held_out = ValDocuments(cfg, tokenizer, cache_dir)
    key_inputs = {
        "packer": PACKER_VERSION,
        "split": split,
        "seq_length": cfg.seq_length,
        "corpus": held_out.fingerprint if cfg.source in PRETOKENIZED else corpus.fingerprint(split),
        "tokenizer_sha256": tokenizer.sha256,
    }
    entry = cache_dir / f"rows-{split}-{digest(key_inputs)[:16]}"
    if not (entry / "meta.json").is_file():
        t0 = time.perf_counter()
        if cfg.source in ("sft", "chat_jsonl"):
            convs = corpus.conversations(split)
            ids, masks = sft.encode_conversations(tokenizer, convs)
            rows = pack_documents(ids, cfg.seq_length, tokenizer.eod_id, tokenizer.pad_id, target_masks=masks)
            num_documents = len(convs)
        elif cfg.source in PRETOKENIZED:
            docs = held_out.read()
            rows = pack_documents(docs, cfg.seq_length, tokenizer.eod_id, tokenizer.pad_id)
            num_documents = len(docs)
        else:
            texts = corpus.texts(split)
            rows = pack_documents(tokenizer.encode_batch(texts), cfg.seq_length, tokenizer.eod_id, tokenizer.pad_id)
            num_documents = len(texts)
        stats = {
            "num_documents": num_documents,
            **packing_summary(rows),
            "skipped_lines": corpus.skipped_lines,
            "tokenizer_vocab_size": tokenizer.vocab_size,
        }
        meta = {"key_inputs": key_inputs, "data_config": dataclasses.asdict(cfg), "stats": stats}
        write_rows(entry, rows, meta)
        BUILD_EVENTS["rows_written"] += 1
        log.info(
            "packed %s: %d documents -> %d rows of %d (%.1f%% tokens) in %.1fs -> %s",
            split, num_documents, stats["num_rows"], cfg.seq_length, 100 * stats["non_padding_fraction"],
            time.perf_counter() - t0, entry,
        )
    rows, meta = read_rows(entry)
    return PackedDataset(rows, meta, tokenizer, split, entry, seed=cfg.seed)


def build_conversations(cfg: DataConfig, split: str = "val") -> list[sft.Conversation]:
    """The conversations of `split` of a chat source (`sft` | `chat_jsonl`), e.g. to evaluate on."""
    cfg.validate()
    if cfg.source not in ("sft", "chat_jsonl"):
        raise ValueError(
            f"data.source={cfg.source}: has no conversations; use data.source=sft or chat_jsonl (chat template data)"
        )
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not a split; use one of {', '.join(SPLITS)}")
    if split == "val" and cfg.num_val_documents == 0:
        raise ValueError("data.num_val_documents=0: there is no validation split; set it > 0")
    return _Corpus(cfg).conversations(split)
