"""Packed multimodal rows with the trainer's dataset interface (recipes.data.PackedDataset's API).

`MultimodalPackedDataset` has `tokenizer`, `split`, `num_rows`, `seq_length`, `batches(batch_size,
start, seed, num_batches)` (endless, seeded, resumable by global sample position), `eval_batches(
batch_size, num_batches)` (stored order, all-padding filler rows) and `packing_stats()`. Batches
are dicts with every key of `MindVL.BATCH_KEYS`.

Memory: token ids, targets and M-RoPE positions of every sample are kept; patches are re-made at
collation (the synthetic generator and JSONL images are deterministic), so a split costs a few MB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

from mindvl.data import build_dataset as build_examples
from mindvl.data import TemplateMix, collate, encode_example, pack, packing_efficiency
from mindvl.processor import ImageProcessor, data_tokenizer


@dataclass
class MindVLDataConfig:
    """What the multimodal rows are made of (the `data:` section of a MindVL recipe)."""
    path: str = "synthetic"                 # 'synthetic', 'synthetic:task1,task2' or a LLaVA-style .jsonl
    num_samples: int = 2000                 # synthetic: samples in the training split
    num_val_samples: int = 128              # synthetic: samples in the validation split
    validation_fraction: float = 0.05       # jsonl: share of lines held out (deterministic hash)
    template: str = "chat"                  # 'chat' (answer-only loss) | 'plain' (captioning-style)
    chat_fraction: float = 0.0              # share of samples rendered with 'chat' instead (deterministic)
    seq_length: int = 512                   # LLM tokens per packed row
    max_patches: int = 512                  # ViT patch slots per packed row (multiple of merge²)
    packed: bool = True                     # several samples per row (False: one sample per row)
    min_pixels: int = 56 * 56               # processor budget, smallest resized area
    max_pixels: int = 112 * 112             # processor budget, largest resized area
    min_side: int = 56                      # synthetic native resolutions: shortest side
    max_side: int = 224                     # synthetic native resolutions: longest side
    seed: int = 1234                        # synthetic generation / jsonl split
    tokenizer_json: str = ""                # a checkpoint's tokenizer.json (an imported run sets it); "" =
                                            # the built-in ByteTokenizer

    def validate(self):
        if self.max_patches % 4:
            raise ValueError(f"max_patches: {self.max_patches} is not a multiple of 4 (merge 2×2); use e.g. 512")
        if self.template not in ("chat", "plain"):
            raise ValueError(f"template: unknown '{self.template}'; use 'chat' or 'plain'")
        if not 0.0 <= self.chat_fraction <= 1.0:
            raise ValueError(f"chat_fraction: {self.chat_fraction} is outside [0, 1]; use e.g. 0.25")
        if self.seq_length < 8:
            raise ValueError(f"seq_length: {self.seq_length} is too short; use e.g. 512")
        self.processor().validate()
        if self.tokenizer_json and not os.path.isfile(self.tokenizer_json):
            raise ValueError(f"tokenizer_json: {self.tokenizer_json} not found; give a tokenizer.json or \"\" for the "
                             "built-in ByteTokenizer")

    def processor(self) -> ImageProcessor:
        return ImageProcessor(min_pixels=self.min_pixels, max_pixels=self.max_pixels)


class MultimodalPackedDataset:
    def __init__(self, cfg: MindVLDataConfig, split: str = "train", tokenizer=None, merge: int = 2,
                 window_merged: int = 4):
        cfg.validate()
        split = {"val": "validation"}.get(split, split)
        self.cfg, self.split = cfg, split
        self.tokenizer = tokenizer or data_tokenizer(cfg.tokenizer_json)
        self.processor = cfg.processor()
        self.merge, self.window_merged = merge, window_merged
        if cfg.path.startswith("synthetic"):
            size = cfg.num_samples if split == "train" else cfg.num_val_samples
            self.examples = build_examples(cfg.path, split, size=size, seed=cfg.seed, min_side=cfg.min_side,
                                           max_side=cfg.max_side)
        else:
            self.examples = build_examples(cfg.path, split, seed=cfg.seed,
                                           validation_fraction=cfg.validation_fraction)
        if cfg.chat_fraction > 0:
            self.examples = TemplateMix(self.examples, cfg.chat_fraction, split, cfg.seed)
        self.samples = []
        for i in range(len(self.examples)):
            s = encode_example(self.examples[i], self.processor, self.tokenizer, cfg.template)
            self.samples.append(replace(s, patches=np.zeros((s.num_patches, 0), np.float32)))
        self.rows = pack(self.samples, cfg.seq_length, cfg.max_patches, cfg.packed)
        self.num_rows = len(self.rows)
        self.seq_length = cfg.seq_length
        self._stats = packing_efficiency(self.samples, self.rows, cfg.seq_length, cfg.max_patches)
        unpacked = pack(self.samples, cfg.seq_length, cfg.max_patches, packed=False)
        self._stats.update(num_samples=len(self.samples),
                           unpacked=packing_efficiency(self.samples, unpacked, cfg.seq_length, cfg.max_patches))

    def __len__(self):
        return self.num_rows

    def packing_stats(self) -> dict:
        """rows, token_efficiency (non-padding fraction), patch_efficiency, and the same for
        one-sample-per-row batches under 'unpacked'."""
        return dict(self._stats)

    def _batch(self, row_ids) -> dict:
        rows = [self.rows[r] if r >= 0 else [] for r in row_ids]
        needed = sorted({i for r in rows for i in r})
        full = {i: encode_example(self.examples[i], self.processor, self.tokenizer, self.cfg.template)
                for i in needed}
        samples = [full.get(i) for i in range(max(needed) + 1)] if needed else []
        return collate(samples, rows, self.cfg.seq_length, self.cfg.max_patches, self.tokenizer, self.merge,
                       self.window_merged, self.processor.patch_dim)

    def batches(self, batch_size: int, start: int = 0, seed: int | None = None, num_batches: int | None = None):
        if self.num_rows == 0:
            raise ValueError(f"the {self.split} split has no rows; add samples or raise seq_length")
        seed = self.cfg.seed if seed is None else seed

        def stream(position):
            produced = 0
            while num_batches is None or produced < num_batches:
                pos = np.arange(position, position + batch_size)
                epochs, offs = np.divmod(pos, self.num_rows)
                idx = [int(np.random.default_rng(seed + int(e)).permutation(self.num_rows)[o])
                       for e, o in zip(epochs, offs)]
                yield self._batch(idx)
                position += batch_size
                produced += 1
        return stream(start)

    def eval_batches(self, batch_size: int, num_batches: int | None = None):
        total = -(-self.num_rows // batch_size)
        total = total if num_batches is None else min(total, num_batches)
        for b in range(total):
            idx = list(range(b * batch_size, min((b + 1) * batch_size, self.num_rows)))
            yield self._batch(idx + [-1] * (batch_size - len(idx)))
