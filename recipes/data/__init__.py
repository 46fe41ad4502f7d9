"""The data pipeline: synthetic or JSONL text (or chat conversations) → sentencepiece → packed rows → MindRecord
cache; or pre-tokenized Megatron / MindRecord shards (made by `python -m recipes.data.prepare`) streamed into
the same packed rows.

Entry point: `build_dataset(DataConfig(...), split="train" | "val") -> PackedDataset | ShardDataset`,
whose `batches(batch_size, start=position, seed=...)` yields dicts of the batch contract (`BATCH_KEYS`,
recipes/data/packing.py).
"""

from recipes.data.config import DataConfig
from recipes.data.dataset import (BUILD_EVENTS, PackedDataset, build_conversations, build_dataset, corpus_texts,
                                  load_tokenizer, resolve_cache_dir)
from recipes.data.jsonl import read_jsonl_texts
from recipes.data.packing import BATCH_KEYS, pack_documents
from recipes.data.shards import ShardDataset
from recipes.data.sft import Conversation, encode_conversations, render
from recipes.data.synthetic import TASKS, generate_corpus
from recipes.data.tokenizer import CHAT_TOKENS, Tokenizer, train_tokenizer

__all__ = [
    "BATCH_KEYS",
    "BUILD_EVENTS",
    "CHAT_TOKENS",
    "Conversation",
    "DataConfig",
    "PackedDataset",
    "ShardDataset",
    "TASKS",
    "Tokenizer",
    "build_conversations",
    "build_dataset",
    "corpus_texts",
    "encode_conversations",
    "generate_corpus",
    "load_tokenizer",
    "pack_documents",
    "read_jsonl_texts",
    "render",
    "resolve_cache_dir",
    "train_tokenizer",
]
