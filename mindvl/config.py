"""MindVL configuration: the vision tower (Qwen2.5-VL `vision_config` key names) + which decoder.

Two architectures share this module: `mindvl` (MindVLConfig) is MindVL in the real Qwen2.5-VL layout, the
dense Qwen2 decoder (`pangu.qwen2`); `mindvl_pangu` (MindVLPanguConfig) takes a Pangu MoE decoder
("pangu_pro_moe", "pangu_ultra_moe") and has its own serving layout (mindvl.convert), since Qwen2.5-VL's
loaders refuse MoE layers. The decoder is built from one of its presets plus overrides; MindVL only adds
the vision tower and M-RoPE.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pangu.decoders import DECODERS, get_decoder
from pangu.shape import ModelShape, VisionShape


@dataclass
class VisionConfig:
    """The ViT + patch merger (field names as Qwen2.5-VL's `vision_config`)."""
    depth: int = 32                         # transformer blocks
    hidden_size: int = 1280                 # ViT width C
    intermediate_size: int = 3420           # SwiGLU inner width of each block
    num_heads: int = 16                     # attention heads (head_dim = hidden_size / num_heads)
    in_chans: int = 3                       # image channels
    patch_size: int = 14                    # spatial patch side (pixels)
    temporal_patch_size: int = 2            # frames per patch (a still image repeats its frame)
    spatial_merge_size: int = 2             # merger joins merge×merge neighbouring patches
    window_size: int = 112                  # window side in pixels (112 = 8 patches = 4 merged tokens)
    fullatt_block_indexes: tuple = (7, 15, 23, 31)  # blocks with full (per-image) attention
    out_hidden_size: int = 3584             # merger output width = the decoder's hidden size
    rms_norm_eps: float = 1e-6              # RMSNorm eps in blocks and merger
    rope_theta: float = 10000.0             # 2-D RoPE base
    initializer_range: float = 0.02         # std of the normal init of linear weights

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_chans * self.temporal_patch_size * self.patch_size ** 2

    @property
    def window_merged(self) -> int:
        """Window side in merged tokens."""
        return self.window_size // (self.patch_size * self.spatial_merge_size)

    def validate(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"vision_config.hidden_size: {self.hidden_size} not divisible by num_heads "
                             f"{self.num_heads}; pick a multiple")
        if self.head_dim % 4:
            raise ValueError(f"vision_config.num_heads: head_dim {self.head_dim} must be a multiple of 4 (2-D RoPE "
                             f"splits the rotary pairs between rows and columns); change hidden_size/num_heads")
        if self.window_size % (self.patch_size * self.spatial_merge_size):
            raise ValueError(f"vision_config.window_size: {self.window_size} is not a multiple of patch_size·merge "
                             f"= {self.patch_size * self.spatial_merge_size}; use e.g. 112")
        bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"vision_config.fullatt_block_indexes: {bad} outside [0, {self.depth}); fix the indexes")


@dataclass
class MindVLConfig:
    """Vision tower + the Qwen2 decoder + M-RoPE (the Qwen2.5-VL layout)."""
    TEXT_ARCHS = ("qwen2",)                 # decoders this architecture takes (class constant, not a field)
    vision_config: VisionConfig = field(default_factory=VisionConfig)  # the ViT and merger
    text_arch: str = "qwen2"                # decoder architecture in pangu.decoders
    text_preset: str = "tiny"               # decoder preset
    text_overrides: dict = field(default_factory=dict)  # decoder config field -> value
    mrope_section: tuple = ()               # rotary pairs for (t, h, w); () = auto (D/8, 3D/16, 3D/16)
    image_token_id: int = 6                 # <|image_pad|> (ByteTokenizer numbering by default)
    vision_start_token_id: int = 4          # <|vision_start|>
    vision_end_token_id: int = 5            # <|vision_end|>
    vocab_size: int = 0                     # >0 overrides the decoder's vocab_size (trainer fits the tokenizer)
    compute_dtype: str = "float32"          # matmul dtype of ViT and decoder "float32" | "bfloat16" (Ascend)

    def validate(self):
        self.vision_config.validate()
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype: unknown '{self.compute_dtype}'; use float32 or bfloat16")
        if self.vocab_size < 0:
            raise ValueError(f"vocab_size: {self.vocab_size} < 0; use 0 (decoder preset) or the tokenizer size")
        if self.text_arch not in DECODERS:
            raise ValueError(f"text_arch: {self.text_arch!r} is not a decoder; use one of {sorted(DECODERS)}")
        if self.text_arch not in self.TEXT_ARCHS:
            other = "mindvl" if self.text_arch == "qwen2" else "mindvl_pangu"
            raise ValueError(f"text_arch: {self.text_arch!r} is not a decoder of this architecture (it takes "
                             f"{', '.join(self.TEXT_ARCHS)}); use model.arch: {other}")
        try:
            self.text_config()
        except ValueError as err:   # a bad text_preset / text_overrides key, or a bad decoder value
            raise ValueError(f"text_overrides.{err}" if not str(err).startswith("preset:")
                             else f"text_preset: {str(err).split(': ', 1)[1]}") from None
        return self

    def text_config(self):
        """The decoder config: preset + text_overrides (+ vocab_size / compute_dtype of this config)."""
        kw = dict(self.text_overrides)
        if self.vocab_size:
            kw["vocab_size"] = self.vocab_size
        kw.setdefault("compute_dtype", self.compute_dtype)
        return get_decoder(self.text_arch).config(self.text_preset, **kw)

    def decoder_rope(self) -> tuple:
        """(rotary dim, theta, layout) of the decoder's RoPE: MLA rotates its qk_rope dims interleaved,
        GQA its full head dim rotate-half (the layout of each decoder's checkpoints)."""
        text = self.text_config()
        s = get_decoder(self.text_arch).shape(text)
        if s.attention == "mla":
            return s.qk_rope_dim, text.rope_theta, "interleaved"
        return s.head_dim, text.rope_theta, "rotate_half"

    def mrope(self) -> tuple:
        """M-RoPE sections (t, h, w) in rotary pairs: `mrope_section`, or auto from the rotary dim."""
        return tuple(self.mrope_section) or auto_mrope_section(self.decoder_rope()[0])

    def vision_for_decoder(self) -> VisionConfig:
        """The vision config with the merger's output width set to the decoder's hidden size."""
        return dataclasses.replace(self.vision_config, out_hidden_size=self.text_config().hidden_size)


@dataclass
class MindVLPanguConfig(MindVLConfig):
    """Vision tower + a Pangu MoE decoder + M-RoPE (architecture `mindvl_pangu`, its own serving layout)."""
    TEXT_ARCHS = ("pangu_pro_moe", "pangu_ultra_moe")
    text_arch: str = "pangu_pro_moe"        # decoder architecture in pangu.decoders (a Pangu MoE)


def auto_mrope_section(rotary_dim: int) -> tuple:
    """Split rotary_dim/2 frequency pairs into (t, h, w) like Qwen2.5-VL's [16, 24, 24] of 64."""
    half = rotary_dim // 2
    t = half // 4
    h = (half - t) // 2
    return (t, h, half - t - h)


def vision_preset(name: str) -> VisionConfig:
    """tiny: test-size tower; bench: a small trainable tower; full: the 7B-reference tower."""
    if name == "tiny":
        return VisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                            fullatt_block_indexes=(1,), out_hidden_size=64)
    if name == "bench":
        return VisionConfig(depth=4, hidden_size=128, intermediate_size=256, num_heads=4,
                            fullatt_block_indexes=(1, 3), out_hidden_size=256)
    if name == "full":
        return VisionConfig()
    raise ValueError(f"vision preset: unknown '{name}'; use tiny | bench | full")


def count_vision_parameters(v: VisionConfig) -> int:
    """Analytic parameter count of the ViT + merger."""
    c, i, c4 = v.hidden_size, v.intermediate_size, v.hidden_size * v.spatial_merge_size ** 2
    block = 2 * c + (3 * c * c + 3 * c) + (c * c + c) + (2 * c * i + 2 * i) + (i * c + c)
    merger = c + (c4 * c4 + c4) + (c4 * v.out_hidden_size + v.out_hidden_size)
    return c * v.patch_dim + v.depth * block + merger


def count_parameters(cfg: MindVLConfig):
    """(total, active): vision tower (always active) + the decoder's own analytic count."""
    text = cfg.text_config()
    vision = count_vision_parameters(cfg.vision_for_decoder())
    total, active = get_decoder(cfg.text_arch).count_parameters(text)
    return total + vision, active + vision


def model_shape(cfg: MindVLConfig) -> ModelShape:
    """The planner's view: the decoder's own shape plus the vision tower."""
    text = cfg.text_config()
    v = cfg.vision_for_decoder()
    vision = VisionShape(depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                         num_heads=v.num_heads, patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
                         in_channels=v.in_chans, spatial_merge_size=v.spatial_merge_size,
                         out_hidden_size=v.out_hidden_size, window_size=v.window_size,
                         fullatt_block_indexes=tuple(v.fullatt_block_indexes))
    return dataclasses.replace(get_decoder(cfg.text_arch).shape(text), arch="mindvl", vision=vision)


PRESETS = {name: (lambda n=name: MindVLConfig(vision_config=vision_preset(n), text_preset=n))
           for name in ("tiny", "bench")}
# Qwen2.5-VL-7B: the ViT + the Qwen2.5-7B decoder with the VL model's 128k positions and M-RoPE [16, 24, 24]
PRESETS["full"] = lambda: MindVLConfig(vision_config=vision_preset("full"), text_preset="full",
                                       text_overrides={"max_position_embeddings": 128000})
PANGU_PRESETS = {name: (lambda n=name: MindVLPanguConfig(vision_config=vision_preset(n), text_preset=n))
                 for name in ("tiny", "bench", "full")}
