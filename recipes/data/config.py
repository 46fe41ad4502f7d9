"""`DataConfig`: everything that determines the training data (corpus, tokenizer, packing, cache).

Every field that changes the content of the packed rows is part of the cache key (see
`recipes.data.dataset`), so changing any of them rebuilds exactly what it affects and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from recipes.data.synthetic import TASK_FNS, TASKS

SOURCES = ("synthetic", "jsonl", "sft", "chat_jsonl", "megatron", "mindrecord")
PRETOKENIZED = ("megatron", "mindrecord")  # token-id shards (recipes.data.shards); made by recipes.data.prepare


@dataclass
class DataConfig:
    """Where the text comes from, how it is tokenized and how it is packed into rows."""

    # synthetic: built-in task corpus; jsonl: user text; sft: built-in task conversations (chat
    # template, answer-only loss); chat_jsonl: user conversations {"messages": [...]} (same loss);
    # megatron: Megatron-LM .bin/.idx token shards; mindrecord: MindRecord token shards (MindFormers' input_ids)
    source: Literal["synthetic", "jsonl", "sft", "chat_jsonl", "megatron", "mindrecord"] = "synthetic"
    path: str = ""  # source=jsonl|chat_jsonl: the JSONL file (relative to the cwd)
    # source=megatron|mindrecord: training shards (relative to the cwd), each a Megatron prefix (PREFIX.bin +
    # PREFIX.idx) or a MindRecord file; a glob pattern (data/web-*) is one path whose shards are read in sorted order
    paths: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()  # mixing weight per entry of `paths` (normalised); empty: by size (rows)
    val_paths: tuple[str, ...] = ()  # source=megatron|mindrecord: held-out shards; num_val_documents are read
    num_documents: int = 20000  # source=synthetic|sft: documents (sft: conversations) in the training split
    # held-out documents/conversations (built-in: own seed stream; files: seeded pick; shards: the first of val_paths)
    num_val_documents: int = 512
    tasks: tuple[str, ...] = TASKS  # source=synthetic|sft: task mix, sampled uniformly; repeat a name to weight it
    max_examples_per_document: int = 4  # source=synthetic: a document holds 1..N examples of one task
    vocab_size: int = 256  # upper bound on tokenizer pieces; the trained one is smaller if the corpus has fewer
    # sentencepiece .model (or a Hugging Face tokenizer.json: recipes.data.tokenizer.JsonTokenizer) to use instead of
    # training one (required for shards)
    tokenizer_model: Optional[str] = None
    seq_length: int = 128  # tokens per packed row (the model's training sequence length)
    seed: int = 1234  # corpus generation and the jsonl held-out pick (batch order takes its own seed)
    skip_bad_lines: bool = False  # source=jsonl|chat_jsonl: skip malformed lines with a warning instead of stopping
    cache_dir: str = ".cache/data"  # tokenizers and MindRecord rows; a relative path is under the repo root

    def validate(self) -> None:
        """Raise `ValueError("<field>: <problem>; <fix>")` for the first inconsistent field."""
        if self.source not in SOURCES:
            raise ValueError(f"source: {self.source!r} is not a known source; use one of {', '.join(SOURCES)}")
        if self.source == "jsonl" and not self.path:
            raise ValueError("path: required when source='jsonl'; set path to a file of {\"text\": ...} lines")
        if self.source == "chat_jsonl" and not self.path:
            raise ValueError("path: required when source='chat_jsonl'; set path to a file of {\"messages\": [...]} lines")
        if self.source in PRETOKENIZED:
            self._validate_shards()
        else:
            for name in ("paths", "weights", "val_paths"):
                if getattr(self, name):
                    raise ValueError(f"{name}: only for source=megatron|mindrecord (token shards); "
                                     f"remove it or set source to one of {', '.join(PRETOKENIZED)}")
        if self.source in ("synthetic", "sft") and self.num_documents < 1:
            raise ValueError(f"num_documents: {self.num_documents} must be >= 1; use e.g. 20000")
        if self.num_val_documents < 0:
            raise ValueError(f"num_val_documents: {self.num_val_documents} must be >= 0; use 0 for no held-out split")
        if self.source in ("synthetic", "sft"):
            if not self.tasks:
                raise ValueError(f"tasks: empty task mix; choose from {', '.join(TASKS)}")
            unknown = [t for t in self.tasks if t not in TASK_FNS]
            if unknown:
                raise ValueError(f"tasks: unknown task {unknown[0]!r}; choose from {', '.join(TASK_FNS)}")
            if self.max_examples_per_document < 1:
                raise ValueError(
                    f"max_examples_per_document: {self.max_examples_per_document} must be >= 1; use e.g. 4"
                )
        if self.tokenizer_model is None and not 16 <= self.vocab_size <= 1_000_000:
            raise ValueError(f"vocab_size: {self.vocab_size} is out of range; use 16..1000000 (e.g. 256)")
        if self.tokenizer_model is not None and not self.tokenizer_model:
            raise ValueError("tokenizer_model: empty path; give a sentencepiece .model file or leave it unset (null)")
        if self.seq_length < 2:
            raise ValueError(f"seq_length: {self.seq_length} must be >= 2; use the model's sequence length, e.g. 128")
        if not self.cache_dir:
            raise ValueError("cache_dir: empty path; use e.g. .cache/data")

    def _validate_shards(self) -> None:
        src = self.source
        if self.path:
            raise ValueError(f"path: is for JSONL sources; give source={src} shards as paths=[...]")
        if not self.paths:
            raise ValueError(f"paths: required when source={src}; list the shard prefixes/files "
                             "(python -m recipes.data.prepare writes them)")
        if any(not p for p in self.paths + self.val_paths):
            raise ValueError("paths: an empty entry; give each shard's path")
        if self.weights:
            if len(self.weights) != len(self.paths):
                raise ValueError(f"weights: {len(self.weights)} weights for {len(self.paths)} paths; "
                                 "give one weight per path, or none to mix by size")
            bad = [w for w in self.weights if not w > 0]
            if bad:
                raise ValueError(f"weights: {bad[0]} must be > 0; drop the path instead of weighting it 0")
        if self.num_val_documents == 0 and self.val_paths:
            raise ValueError("val_paths: given but num_val_documents=0 reads none of it; "
                             "set num_val_documents > 0 or remove val_paths")
        if self.num_val_documents > 0 and not self.val_paths:
            raise ValueError(f"val_paths: required when source={src} (the held-out split is read from it); "
                             "give held-out shards (prepare writes <out>/val) or set num_val_documents=0")
        if self.tokenizer_model is None:
            raise ValueError(f"tokenizer_model: required when source={src}; give the sentencepiece model "
                             "the shards were made with (prepare copies it to <out>/tokenizer.model)")
