"""Image processor + chat template for MindVL (Qwen2-VL semantics: native resolution, no tiling).

Legend: P = patches of one image, D_p = 3 · temporal_patch · patch² = 1176 flattened patch values
(channel-major, then temporal, then patch row, then patch column: the order of the serving Conv3d
weight [C_out, 3, 2, 14, 14]).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np

# CLIP normalisation, as the Qwen2-VL family's preprocessor_config.json.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280, name: str = "image") -> tuple[int, int]:
    """Target (height, width): both multiples of `factor`, area within [min_pixels, max_pixels],
    aspect ratio kept as closely as the rounding allows (Qwen2-VL's smart_resize)."""
    if height < factor or width < factor:
        raise ValueError(f"{name}: image too small ({width}x{height} px); both sides must be >= {factor} px "
                         f"— upscale it or drop it from the data")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"{name}: aspect ratio {width}x{height} exceeds 200; crop it or drop it from the data")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def load_image(path_or_image, name: str | None = None):
    """Open an image as RGB PIL.Image; a corrupt/empty file raises a one-line ValueError naming it."""
    from PIL import Image, UnidentifiedImageError
    if isinstance(path_or_image, Image.Image):
        img = path_or_image
        name = name or "<in-memory image>"
    else:
        name = name or str(path_or_image)
        if not os.path.exists(path_or_image):
            raise ValueError(f"{name}: image file not found; fix the path in the data file or the image root")
        if os.path.getsize(path_or_image) == 0:
            raise ValueError(f"{name}: image file is empty (0 bytes); re-download it or drop the sample")
        try:
            with Image.open(path_or_image) as f:
                f.load()
                img = f.copy()
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(f"{name}: cannot decode image ({type(e).__name__}); re-encode it as PNG/JPEG "
                             f"or drop the sample") from None
    if img.width == 0 or img.height == 0:
        raise ValueError(f"{name}: image has zero size ({img.width}x{img.height}); drop the sample")
    out = img.convert("RGB")
    out.filename = name          # later errors (too small, bad aspect ratio) name the file too
    return out


@dataclass
class ImageProcessor:
    """Resize + normalise + patchify; saved as preprocessor_config.json (Qwen2-VL key names)."""
    min_pixels: int = 56 * 56            # smallest resized area (pixels)
    max_pixels: int = 28 * 28 * 1280     # largest resized area (pixels); the test-time search tunes this
    patch_size: int = 14                 # ViT patch side (pixels)
    temporal_patch_size: int = 2         # frames per patch; a still image repeats its frame
    merge_size: int = 2                  # merger joins merge_size² neighbouring patches
    image_mean: tuple = IMAGE_MEAN       # per-channel mean after rescale to [0, 1]
    image_std: tuple = IMAGE_STD         # per-channel std
    extra: dict = field(default_factory=dict)  # free-form notes (e.g. the resolution-search record)

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size ** 2

    def validate(self):
        if self.min_pixels < self.factor ** 2:
            raise ValueError(f"min_pixels: {self.min_pixels} < {self.factor}²; use at least {self.factor ** 2}")
        if self.max_pixels < self.min_pixels:
            raise ValueError(f"max_pixels: {self.max_pixels} < min_pixels {self.min_pixels}; raise max_pixels")

    def target_size(self, height: int, width: int, name: str = "image") -> tuple[int, int]:
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels, name=name)

    def __call__(self, image, name: str | None = None):
        """image (path or PIL) -> (patches [P, D_p] float32 in merge order, grid_thw (1, h, w))."""
        from PIL import Image
        img = load_image(image, name or getattr(image, "filename", None) or None)
        label = img.filename
        h, w = self.target_size(img.height, img.width, name=label)
        if (h, w) != (img.height, img.width):
            img = img.resize((w, h), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        return self.patchify(arr.transpose(2, 0, 1)[None])

    def patchify(self, frames_TCHW: np.ndarray):
        """[T, C, H, W] normalised frames -> (patches [P, D_p] in merge order, grid_thw)."""
        tp, ps, m = self.temporal_patch_size, self.patch_size, self.merge_size
        x = frames_TCHW
        if x.shape[0] % tp:
            x = np.concatenate([x] + [x[-1:]] * (tp - x.shape[0] % tp), axis=0)
        T, C, H, W = x.shape
        gt, gh, gw = T // tp, H // ps, W // ps
        x = x.reshape(gt, tp, C, gh // m, m, ps, gw // m, m, ps)
        x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return np.ascontiguousarray(x.reshape(gt * gh * gw, C * tp * ps * ps), dtype=np.float32), (gt, gh, gw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
        d["image_processor_type"] = "Qwen2VLImageProcessor"
        d["do_resize"] = d["do_rescale"] = d["do_normalize"] = True
        d["rescale_factor"] = 1 / 255
        return d

    def save(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "preprocessor_config.json")
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
        return path

    @classmethod
    def load(cls, path: str) -> "ImageProcessor":
        if os.path.isdir(path):
            path = os.path.join(path, "preprocessor_config.json")
        with open(path) as f:
            d = json.load(f)
        keys = {k for k in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in keys}
        for k in ("image_mean", "image_std"):
            if k in kw:
                kw[k] = tuple(kw[k])
        processor = cls(**kw)
        if "extra" not in d:   # a checkpoint's own file (ours always write `extra`): an export writes it back
            processor.source_path = path   # verbatim while the processor is unchanged (not a field)
        return processor


# ---------------------------------------------------------------------------------------------
# Tokenizer + chat template
# ---------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ("<pad>", "<eod>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>")


class ByteTokenizer:
    """Byte-level tokenizer with the MindVL special tokens (ids 0..6, bytes at 7..262).

    Enough for the built-in synthetic data and tests; a real run swaps in the LLM's sentencepiece
    tokenizer with the same special-token names (`token_id(name)` is the only interface used).
    """
    def __init__(self):
        self._special = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
        self.offset = len(SPECIAL_TOKENS)
        self.vocab_size = self.offset + 256
        self.pad_id, self.eod_id = 0, 1

    def token_id(self, name: str) -> int:
        return self._special[name]

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        out, buf = [], bytearray()
        for i in ids:
            i = int(i)
            if i >= self.offset:
                buf.append(i - self.offset)
            else:
                if buf:
                    out.append(buf.decode("utf-8", "replace"))
                    buf = bytearray()
                out.append(SPECIAL_TOKENS[i])
        if buf:
            out.append(buf.decode("utf-8", "replace"))
        return "".join(out)


class HFTokenizer:
    """A checkpoint's own `tokenizer.json` (Hugging Face `tokenizers`; Qwen2's byte-level BPE with its added
    tokens), behind ByteTokenizer's interface: `token_id(name)` for MindVL's special-token names (`<eod>` and
    `<pad>` are Qwen's `<|endoftext|>` unless the file has them by our names, the chat and vision tokens keep
    their names), `encode`, `decode`,
    `vocab_size` (ids including the added tokens), `pad_id`, `eod_id`. The file is read, never rewritten."""

    ALIASES = {"<eod>": "<|endoftext|>", "<pad>": "<|endoftext|>"}

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        if not os.path.isfile(path):
            raise ValueError(f"{path}: tokenizer.json not found; give the path of a checkpoint's tokenizer.json")
        try:
            self._tk = Tokenizer.from_file(path)
        except Exception as err:   # the library raises its own exception type for a malformed file
            raise ValueError(f"{path}: not a tokenizer.json the tokenizers library reads ({str(err)[:80]}); "
                             "use the checkpoint's own file") from None
        self._tk.no_padding()
        self._tk.no_truncation()
        self.path = path
        self.vocab_size = self._tk.get_vocab_size(with_added_tokens=True)
        missing = [t for t in SPECIAL_TOKENS if self.token_id(t) is None]
        if missing:
            raise ValueError(f"{path}: no {self.ALIASES.get(missing[0], missing[0])} token; MindVL needs "
                             f"{', '.join(sorted({self.ALIASES.get(t, t) for t in SPECIAL_TOKENS}))} "
                             "(a Qwen2-VL / Qwen2.5-VL tokenizer has them)")
        self.pad_id, self.eod_id = self.token_id("<pad>"), self.token_id("<eod>")

    def token_id(self, name: str) -> int | None:
        found = self._tk.token_to_id(name)
        return found if found is not None else self._tk.token_to_id(self.ALIASES.get(name, name))

    def encode(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tk.decode([int(i) for i in ids], skip_special_tokens=False)


def data_tokenizer(tokenizer_json: str = ""):
    """The tokenizer of MindVL data: a checkpoint's tokenizer.json (HFTokenizer) or, by default, ByteTokenizer."""
    return HFTokenizer(tokenizer_json) if tokenizer_json else ByteTokenizer()


IMAGE_PLACEHOLDER = "<image>"


def render_conversation(tokenizer, turns, image_token_counts, template: str = "chat",
                        system: str | None = "You are a helpful assistant."):
    """Tokenise a conversation; return (ids [L] int32, target_mask [L] bool) ending with eod.

    turns: [("user"|"assistant", text), ...]; each "<image>" in a user turn becomes
    <|vision_start|> <|image_pad|>×n <|vision_end|>, n taken in order from image_token_counts.
    template "chat": Qwen-style <|im_start|>role\\n ... <|im_end|>\\n; target_mask marks assistant
    answers (+ their <|im_end|> and the final eod) — answer-only loss.
    template "plain": image tokens then text, no roles; every text token of an assistant turn is a
    target (captioning-style pre-training; user text, if any, is context).
    """
    tk = tokenizer
    counts = list(image_token_counts)
    ids, tgt = [], []

    def add(tokens, target):
        ids.extend(tokens)
        tgt.extend([target] * len(tokens))

    def add_text(text, target):
        parts = text.split(IMAGE_PLACEHOLDER)
        for k, part in enumerate(parts):
            if k:
                if not counts:
                    raise ValueError(f"conversation has more '{IMAGE_PLACEHOLDER}' placeholders than images; "
                                     f"fix the sample's text or its image list")
                add([tk.token_id("<|vision_start|>")] + [tk.token_id("<|image_pad|>")] * counts.pop(0)
                    + [tk.token_id("<|vision_end|>")], False)
            if part:
                add(tk.encode(part), target)

    if template == "chat":
        if system:
            add([tk.token_id("<|im_start|>")] + tk.encode("system\n" + system) + [tk.token_id("<|im_end|>")]
                + tk.encode("\n"), False)
        for role, text in turns:
            is_answer = role == "assistant"
            add([tk.token_id("<|im_start|>")] + tk.encode(role + "\n"), False)
            add_text(text, is_answer)
            add([tk.token_id("<|im_end|>")], is_answer)
            add(tk.encode("\n"), False)
    elif template == "plain":
        for role, text in turns:
            add_text(text, role == "assistant")
    else:
        raise ValueError(f"template: unknown '{template}'; use 'chat' or 'plain'")
    if counts:
        raise ValueError(f"conversation has {len(counts)} image(s) without a '{IMAGE_PLACEHOLDER}' placeholder; "
                         f"add the placeholder to a user turn")
    add([tk.eod_id], True)
    return np.asarray(ids, np.int32), np.asarray(tgt, bool)
