"""MindVL data: built-in synthetic multimodal tasks, LLaVA-style JSONL, sample encoding, packing.

Legend: B = rows, S = LLM tokens per row, P = patch slots per row, M = P / merge², D_p = patch values.

A processed sample holds its token ids, a target mask (which tokens are trained on), its images'
patches (merge order) and grid_thw, and its 3-D M-RoPE positions. `pack()` places several samples
per row (first fit) within S tokens and P patches; `collate()` builds the fixed-shape batch dict
(the text batch contract plus the multimodal fields, see `collate`). Each sample is its own segment
in the LLM (segment_ids) and each image its own segment in the ViT, so nothing attends across samples.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from mindvl import layout
from mindvl.processor import IMAGE_PLACEHOLDER, ImageProcessor, load_image, render_conversation

# ---------------------------------------------------------------------------------------------
# Synthetic tasks
# ---------------------------------------------------------------------------------------------

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 210, 20),
           "white": (250, 250, 250), "black": (10, 10, 10), "purple": (140, 40, 170), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
TASKS = ("caption", "vqa_colour", "vqa_count", "vqa_position", "ocr")


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    h = hashlib.sha256(f"{seed}/{split}/{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def _unit_hash(key: str) -> float:
    """A deterministic uniform number in [0, 1) from `key` (split and template choices)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little") / 2 ** 32


def _random_size(rng, min_side: int, max_side: int) -> tuple[int, int]:
    """Native resolution with an aspect ratio between 1:3 and 3:1 (min_side == max_side: square)."""
    area = rng.uniform(min_side ** 2 * 1.2, max(min_side ** 2 * 1.2, max_side ** 2 * 0.8))
    ratio = float(np.exp(rng.uniform(np.log(1 / 3), np.log(3))))
    w = int(np.clip(np.sqrt(area * ratio), min_side, max_side))
    h = int(np.clip(np.sqrt(area / ratio), min_side, max_side))
    return w, h


def _draw_shapes(rng, w, h):
    from PIL import Image, ImageDraw
    bg = tuple(int(v) for v in rng.integers(100, 160, size=3))
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    n = int(rng.integers(1, 5))
    quads = rng.permutation(4)[:n]
    combos = rng.permutation(len(COLOURS) * len(SHAPES))[:n]
    objs = []
    for q, c in zip(quads, combos):
        colour, shape = list(COLOURS)[c // len(SHAPES)], SHAPES[c % len(SHAPES)]
        qx, qy = (q % 2) * w / 2, (q // 2) * h / 2
        r = min(w, h) / 4 * rng.uniform(0.5, 0.85)
        cx = qx + w / 4 + rng.uniform(-1, 1) * (w / 4 - r) * 0.5
        cy = qy + h / 4 + rng.uniform(-1, 1) * (h / 4 - r) * 0.5
        box = [cx - r, cy - r, cx + r, cy + r]
        fill = COLOURS[colour]
        if shape == "circle":
            d.ellipse(box, fill=fill)
        elif shape == "square":
            d.rectangle(box, fill=fill)
        else:
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        objs.append((int(q), colour, shape))
    objs.sort()
    return img, objs


OCR_DIGITS = (2, 4)          # digits per OCR string (inclusive)
OCR_CELL = 28                # one digit per cell of 28 x 28 px = one merged token (patch 14, merge 2)


def _draw_digits(rng, cell: int = OCR_CELL):
    """A fixed-pitch digit field (an odometer / form box): OCR_DIGITS[1] square cells of `cell` px
    in a row, the string left-aligned, one digit per cell (font ~1.1-1.2 x cell, glyphs ~2/3 x 5/6 of
    it, jittered by ~cell/14), dark ink on a light background. At cell = OCR_CELL each digit falls
    inside one merged token."""
    from PIL import Image, ImageDraw, ImageFont
    text = "".join(str(int(v)) for v in rng.integers(0, 10, size=int(rng.integers(OCR_DIGITS[0], OCR_DIGITS[1] + 1))))
    c, scale = cell, cell / OCR_CELL
    size = int(round(int(rng.integers(30, 35)) * scale))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed bitmap font
        font = ImageFont.load_default()
    bg = tuple(int(v) for v in rng.integers(200, 256, size=3))
    ink = tuple(int(v) for v in rng.integers(0, 60, size=3))
    img = Image.new("RGB", (c * OCR_DIGITS[1], c), bg)
    d = ImageDraw.Draw(img)
    for k, ch in enumerate(text):
        l, t, r, b = d.textbbox((0, 0), ch, font=font)
        x = k * c + (c - (r - l)) / 2 - l + int(rng.integers(-2, 3)) * scale
        y = (c - (b - t)) / 2 - t + int(rng.integers(-1, 2)) * scale
        d.text((x, y), ch, fill=ink, font=font)
    return img, text


def synthetic_example(seed: int, split: str, index: int, tasks=TASKS, min_side: int = 56, max_side: int = 224):
    """One deterministic example: {"images": [PIL], "turns": [(role, text)], "task", "answer"}.

    `tasks` is sampled uniformly (repeat a name to weight it). Shape images have a random native size
    (sides in [min_side, max_side]); OCR images are a fixed-pitch digit field (`_draw_digits`) of
    square cells with sides in [min_side/2, max_side/2] (at least OCR_CELL).
    The question comes before the image, so the answer directly follows the image tokens."""
    rng = _rng(seed, split, index)
    task = tasks[int(rng.integers(0, len(tasks)))]
    w, h = _random_size(rng, min_side, max_side)
    if task == "ocr":
        lo, hi = max(OCR_CELL, min_side // 2), max(OCR_CELL, max_side // 2)
        img, text = _draw_digits(rng, lo if hi <= lo else int(rng.integers(lo, hi + 1)))
        q, a = "What number is written in the image?", text
    else:
        img, objs = _draw_shapes(rng, w, h)
        if task == "caption":
            q = "Describe the image."
            a = ", ".join(f"a {c} {s} at the {QUADRANTS[qd]}" for qd, c, s in objs) + "."
        elif task == "vqa_count":
            q, a = "How many shapes are there?", str(len(objs))
        elif task == "vqa_colour":
            qd, c, s = objs[int(rng.integers(0, len(objs)))]
            q, a = f"What colour is the shape at the {QUADRANTS[qd]}?", c
        else:
            qd, c, s = objs[int(rng.integers(0, len(objs)))]
            q, a = f"Where is the {c} {s}?", QUADRANTS[qd]
    return {"images": [img], "turns": [("user", f"{q}\n{IMAGE_PLACEHOLDER}"), ("assistant", a)],
            "task": task, "answer": a}


class SyntheticDataset:
    """Deterministic synthetic multimodal data; train and validation come from disjoint seed streams."""
    def __init__(self, size: int, split: str = "train", seed: int = 0, tasks=TASKS, min_side: int = 56,
                 max_side: int = 224):
        if split not in ("train", "validation"):
            raise ValueError(f"split: unknown '{split}'; use 'train' or 'validation'")
        bad = [t for t in tasks if t not in TASKS]
        if bad:
            raise ValueError(f"tasks: unknown {bad}; choose from {list(TASKS)}")
        self.size, self.split, self.seed, self.tasks = size, split, seed, tuple(tasks)
        self.min_side, self.max_side = min_side, max_side

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        if not 0 <= i < self.size:
            raise IndexError(i)
        return synthetic_example(self.seed, self.split, i, self.tasks, self.min_side, self.max_side)


def export_llava_jsonl(dataset, directory: str, name: str = "data.jsonl") -> str:
    """Write a dataset as PNG files + LLaVA-style JSONL (the format JsonlDataset reads)."""
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        for i in range(len(dataset)):
            ex = dataset[i]
            files = []
            for k, img in enumerate(ex["images"]):
                rel = f"images/{getattr(dataset, 'split', 'x')}_{i:06d}_{k}.png"
                img.save(os.path.join(directory, rel))
                files.append(rel)
            conv = [{"from": "human" if r == "user" else "gpt", "value": t} for r, t in ex["turns"]]
            rec = {"id": i, "image": files[0] if len(files) == 1 else files, "conversations": conv}
            if "task" in ex:
                rec["task"] = ex["task"]
            f.write(json.dumps(rec) + "\n")
    return path


class JsonlDataset:
    """LLaVA-style JSONL: {"image": "a.png" | [...], "conversations": [{"from": "human"|"gpt", "value"}]}.

    Image paths are relative to `image_root` (default: the JSONL's folder). A deterministic split is
    taken by hashing each record's line number: `validation_fraction` of lines go to validation.
    Images are opened lazily; a bad image raises the processor's one-line ValueError naming the file.
    """
    def __init__(self, path: str, split: str = "train", image_root: str | None = None,
                 validation_fraction: float = 0.0, seed: int = 0):
        if not os.path.exists(path):
            raise ValueError(f"data path {path}: not found; give a LLaVA-style .jsonl file or 'synthetic'")
        self.root = image_root or os.path.dirname(os.path.abspath(path))
        self.records = []
        with open(path) as f:
            for n, line in enumerate(f):
                if not line.strip():
                    continue
                rec = json.loads(line)
                if "conversations" not in rec:
                    raise ValueError(f"{path}:{n + 1}: record has no 'conversations'; use the LLaVA format "
                                     f"{{'image': ..., 'conversations': [{{'from', 'value'}}]}}")
                if validation_fraction > 0:
                    if (_unit_hash(f"{seed}/{n}") < validation_fraction) != (split == "validation"):
                        continue
                self.records.append(rec)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        rec = self.records[i]
        files = rec.get("image") or []
        files = [files] if isinstance(files, str) else list(files)
        images = [load_image(os.path.join(self.root, p), name=os.path.join(self.root, p)) for p in files]
        turns = [("user" if c["from"] in ("human", "user") else "assistant", c["value"])
                 for c in rec["conversations"]]
        if images and not any(IMAGE_PLACEHOLDER in t for _, t in turns):
            role, text = turns[0]
            turns[0] = (role, IMAGE_PLACEHOLDER + "\n" + text)
        answer = next((t for r, t in reversed(turns) if r == "assistant"), "")
        return {"images": images, "turns": turns, "task": rec.get("task", "jsonl"), "answer": answer}


class TemplateMix:
    """A dataset view that renders a deterministic `chat_fraction` of its examples with the chat
    template (their "template" key) and the rest with the dataset's template."""
    def __init__(self, examples, chat_fraction: float, split: str, seed: int = 0):
        self.examples, self.chat_fraction, self.split, self.seed = examples, chat_fraction, split, seed

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        ex = self.examples[i]
        chat = _unit_hash(f"template/{self.seed}/{self.split}/{i}") < self.chat_fraction
        return dict(ex, template="chat") if chat else ex


def build_dataset(path: str, split: str, size: int = 1000, seed: int = 0, **kw):
    """'synthetic' (or 'synthetic:caption,ocr' to choose tasks) or a LLaVA-style .jsonl path."""
    if path == "synthetic" or path.startswith("synthetic:"):
        tasks = tuple(path.split(":", 1)[1].split(",")) if ":" in path else TASKS
        return SyntheticDataset(size, split, seed, tasks, **kw)
    return JsonlDataset(path, split, seed=seed, **kw)


# ---------------------------------------------------------------------------------------------
# Encoding, packing, collation
# ---------------------------------------------------------------------------------------------

@dataclass
class Sample:
    ids: np.ndarray          # [L] int32 token ids (ends with eod)
    target: np.ndarray       # [L] bool, token is a training target
    patches: np.ndarray      # [P_s, D_p] float32, images concatenated, merge order
    grid_thw: np.ndarray     # [n_img, 3] int32
    mrope: np.ndarray        # [3, L] int32
    task: str = ""
    answer: str = ""

    @property
    def num_patches(self):
        return int(self.patches.shape[0])


def encode_example(example, processor: ImageProcessor, tokenizer, template: str = "chat") -> Sample:
    """Process one example; its own "template" key (see `TemplateMix`), if any, overrides `template`."""
    template = example.get("template", template)
    patches, grids = [], []
    for k, img in enumerate(example["images"]):
        p, g = processor(img, name=getattr(img, "filename", None) or f"image {k} of a {example.get('task')} sample")
        patches.append(p)
        grids.append(g)
    m = processor.merge_size
    counts = [layout.num_image_tokens(g, m) for g in grids]
    ids, target = render_conversation(tokenizer, example["turns"], counts, template=template)
    grid = np.asarray(grids, np.int32).reshape(-1, 3)
    mrope = layout.mrope_positions(ids, grid, tokenizer.token_id("<|image_pad|>"), m)
    pv = np.concatenate(patches) if patches else np.zeros((0, processor.patch_dim), np.float32)
    return Sample(ids, target, pv, grid, mrope, example.get("task", ""), example.get("answer", ""))


def pack(samples, seq_len: int, max_patches: int, packed: bool = True):
    """Assign samples to rows (first fit, in order). Returns a list of rows (lists of sample indexes)."""
    rows, used = [], []   # used: (tokens, patches) per row
    for i, s in enumerate(samples):
        L, P = len(s.ids), s.num_patches
        if L > seq_len or P > max_patches:
            raise ValueError(f"sample {i} ({s.task}): {L} tokens / {P} patches exceeds seq_len {seq_len} / "
                             f"max_patches {max_patches}; raise them or lower the processor's max_pixels")
        for r in (range(len(rows)) if packed else ()):
            if used[r][0] + L <= seq_len and used[r][1] + P <= max_patches:
                rows[r].append(i)
                used[r] = (used[r][0] + L, used[r][1] + P)
                break
        else:
            rows.append([i])
            used.append((L, P))
    return rows


def packing_efficiency(samples, rows, seq_len: int, max_patches: int) -> dict:
    tok = sum(len(samples[i].ids) for r in rows for i in r)
    pat = sum(samples[i].num_patches for r in rows for i in r)
    return {"rows": len(rows), "token_efficiency": tok / (len(rows) * seq_len),
            "patch_efficiency": pat / (len(rows) * max_patches) if max_patches else 0.0}


def vision_inputs(grids_per_row, max_patches: int, merge: int = 2, window_merged: int = 4) -> dict:
    """ViT index tensors for rows of images (see `collate` for the fields)."""
    B, M = len(grids_per_row), max_patches // (merge * merge)
    mm = merge * merge
    out = {"vit_position_ids": np.zeros((B, max_patches, 2), np.int32),
           "vit_segment_ids": np.zeros((B, max_patches), np.int32),
           "vit_window_ids": np.zeros((B, max_patches), np.int32),
           "window_index": np.tile(np.arange(M, dtype=np.int32), (B, 1)),
           "reverse_window_index": np.tile(np.arange(M, dtype=np.int32), (B, 1))}
    for b, grids in enumerate(grids_per_row):
        if len(grids) == 0:
            continue
        grids = np.asarray(grids).reshape(-1, 3)
        pos = layout.vit_rotary_positions(grids, merge)
        widx, wids, iids = layout.window_layout(grids, merge, window_merged)
        n, nm = pos.shape[0], widx.shape[0]
        out["vit_position_ids"][b, :n] = pos
        out["vit_segment_ids"][b, :n] = np.repeat(iids, mm)
        out["vit_window_ids"][b, :n] = np.repeat(wids, mm)
        out["window_index"][b, :nm] = widx
        out["reverse_window_index"][b, :nm] = np.argsort(widx)
    return out


def collate(samples, rows, seq_len: int, max_patches: int, tokenizer, merge: int = 2,
            window_merged: int = 4, patch_dim: int = 1176) -> dict:
    """Fixed-shape batch dict. Text fields follow the batch contract ([B, S]); extra fields:

    - mrope_position_ids [B, 3, S] int32 (t/h/w positions; position_ids = its temporal row)
    - image_mask [B, S] float32 1.0 at <|image_pad|> tokens; image_token_index [B, S] int32: which
      merged vision token (in the row's merge order) fills that slot (0 elsewhere)
    - pixel_values [B, P, D_p] float32 (zero padding); vit_position_ids [B, P, 2] (row, col);
      vit_segment_ids [B, P] (image number in the row, 0 = pad: full-attention blocks);
      vit_window_ids [B, P] (window number in the row, 0 = pad: window blocks);
      window_index / reverse_window_index [B, P/merge²] int32 (merge order -> window order and back).
    """
    B = len(rows)
    img_id = tokenizer.token_id("<|image_pad|>")
    batch = {"input_ids": np.full((B, seq_len), tokenizer.pad_id, np.int32),
             "labels": np.zeros((B, seq_len), np.int32),
             "loss_mask": np.zeros((B, seq_len), np.float32),
             "position_ids": np.zeros((B, seq_len), np.int32),
             "segment_ids": np.zeros((B, seq_len), np.int32),
             "mrope_position_ids": np.zeros((B, 3, seq_len), np.int32),
             "image_mask": np.zeros((B, seq_len), np.float32),
             "image_token_index": np.zeros((B, seq_len), np.int32),
             "pixel_values": np.zeros((B, max_patches, patch_dim), np.float32)}
    grids_per_row = []
    for b, row in enumerate(rows):
        t = p = 0
        grids = []
        for seg, i in enumerate(row, start=1):
            s = samples[i]
            L = len(s.ids)
            batch["input_ids"][b, t:t + L] = s.ids
            batch["labels"][b, t:t + L - 1] = s.ids[1:]
            batch["loss_mask"][b, t:t + L - 1] = s.target[1:]
            batch["segment_ids"][b, t:t + L] = seg
            batch["mrope_position_ids"][b, :, t:t + L] = s.mrope
            batch["position_ids"][b, t:t + L] = s.mrope[0]
            batch["pixel_values"][b, p:p + s.num_patches] = s.patches
            grids.extend(s.grid_thw.tolist())
            t += L
            p += s.num_patches
        is_img = batch["input_ids"][b] == img_id
        batch["image_mask"][b] = is_img
        batch["image_token_index"][b, is_img] = np.arange(int(is_img.sum()), dtype=np.int32)
        assert int(is_img.sum()) == p // (merge * merge), "image tokens must match merged patches"
        grids_per_row.append(grids)
    batch.update(vision_inputs(grids_per_row, max_patches, merge, window_merged))
    return batch


@dataclass(frozen=True)
class SpecialIds:
    """What `collate` reads from a tokenizer (its pad id and the <|image_pad|> id) for given token ids."""
    pad_id: int
    image_pad_id: int

    def token_id(self, name: str) -> int:
        if name != "<|image_pad|>":
            raise KeyError(f"{name}: SpecialIds knows only <|image_pad|>")
        return self.image_pad_id


def image_runs(ids: np.ndarray, image_token_id: int) -> list[tuple[int, int]]:
    """(start, length) of each run of `image_token_id` in `ids`, in order."""
    is_img = np.concatenate([[False], ids == image_token_id, [False]])
    edges = np.flatnonzero(is_img[1:] != is_img[:-1])
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])]


def sequence_inputs(cfg, ids, pixel_values=None, grid_thw=None) -> dict:
    """One token sequence (with its images' patches [P, D_p] in merge order and grids [n, 3] (t, h, w), as
    Qwen2.5-VL's image processor gives them) as a one-row batch for `model(...)` of a MindVLConfig `cfg`.
    Each image is a run of t·h·w / merge² `cfg.image_token_id` tokens, in grid order; anything else is refused
    in one line."""
    vision = cfg.vision_for_decoder()
    merge, dim = vision.spatial_merge_size, vision.patch_dim
    if (pixel_values is None) != (grid_thw is None):
        raise ValueError("pixel values and grid_thw go together: give both (patches [P, D_p] and t,h,w per image) "
                         "or neither")
    ids = np.asarray(ids, np.int32).reshape(-1)
    grids = np.zeros((0, 3), np.int32) if grid_thw is None else np.asarray(grid_thw, np.int32).reshape(-1, 3)
    patches = np.zeros((0, dim), np.float32) if pixel_values is None else np.asarray(pixel_values, np.float32)
    if patches.ndim != 2 or patches.shape[1] != dim:
        raise ValueError(f"pixel values: shape {patches.shape}, expected [patches, {dim}] (channels x temporal patch "
                         f"x {vision.patch_size}² per patch, the processor's flattened patches)")
    if (grids <= 0).any() or (grids[:, 1:] % merge).any():
        raise ValueError(f"grid_thw: {grids.tolist()}: t, h, w must be positive and h, w multiples of the merge "
                         f"size {merge}")
    if patches.shape[0] != int(grids.prod(axis=1).sum()):
        raise ValueError(f"pixel values: {patches.shape[0]} patches, but grid_thw {grids.tolist()} has "
                         f"{int(grids.prod(axis=1).sum())}; give the patches of exactly these images")
    runs = image_runs(ids, cfg.image_token_id)
    want = [int(t * h * w) // (merge * merge) for t, h, w in grids]
    if [n for _, n in runs] != want:
        raise ValueError(f"tokens: image token {cfg.image_token_id} runs of {[n for _, n in runs]} tokens, but "
                         f"grid_thw needs {want} (t·h·w / {merge * merge} per image, in order); "
                         "put one run per image in the ids")
    sample = Sample(ids, np.zeros(ids.size, bool), patches, grids,
                    layout.mrope_positions(ids, grids, cfg.image_token_id, merge))
    slots = max(patches.shape[0], merge * merge)
    return collate([sample], [[0]], ids.size, slots, SpecialIds(0, cfg.image_token_id), merge, vision.window_merged,
                   dim)
