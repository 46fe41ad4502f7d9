"""The built-in data pipeline: synthetic or JSONL text (or chat conversations) → sentencepiece → packed rows → MindRecord.

Entry point: `build_dataset(DataConfig(...), split="train" | "val") -> PackedDataset`, whose
`batches(batch_size, start=position, seed=...)` yields dicts of the batch contract (`BATCH_KEYS`, recipes/data/packing.py).
"""

from recipes.data.config import DataConfig
from recipes.data.dataset import (BUILD_EVENTS, PackedDataset, build_conversations, build_dataset, load_tokenizer,
                                  resolve_cache_dir)
from recipes.data.jsonl import read_jsonl_texts
from recipes.data.packing import BATCH_KEYS, pack_documents
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
    "TASKS",
    "Tokenizer",
    "build_conversations",
    "build_dataset",
    "encode_conversations",
    "generate_corpus",
    "load_tokenizer",
    "pack_documents",
    "read_jsonl_texts",
    "render",
    "resolve_cache_dir",
    "train_tokenizer",
]
