"""Model shapes for parallel planning, read from the model config dataclasses by field name.

The planner never imports model code: it reads a config (a `pangu` / `mindvl` dataclass, or a
released config.json loaded as a dict) through `model_shape(cfg)`, and derives the full
parameter list analytically with `parameter_shapes(shape)` (serving-layout names, see
/work/shared/MODELS.md) so that 72B / 718B presets can be planned without allocating them.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
from dataclasses import dataclass
from typing import Any, Iterator, Optional


@dataclass(frozen=True)
class VisionShape:
    """ViT tower + patch merger of a Qwen2.5-VL-style VLM (MindVL)."""
    depth: int                 # ViT blocks
    hidden_size: int           # ViT width C
    intermediate_size: int     # ViT SwiGLU width
    num_heads: int             # ViT attention heads
    patch_size: int = 14       # spatial patch
    temporal_patch_size: int = 2
    in_channels: int = 3
    spatial_merge_size: int = 2
    out_hidden_size: int = 0   # LLM hidden the merger projects to
    window_size: int = 112     # window side in pixels (8x8 patches)
    fullatt_block_indexes: tuple = ()


@dataclass(frozen=True)
class ModelShape:
    """Everything the planner needs to know about a decoder-only LM (optionally with a ViT)."""
    arch: str
    vocab_size: int
    hidden_size: int
    num_layers: int            # decoder layers, MTP excluded
    num_heads: int
    num_kv_heads: int
    head_dim: int              # GQA head dim (= qk dim); for MLA qk_nope + qk_rope
    v_head_dim: int
    attention: str = "gqa"     # "gqa" | "mla"
    qkv_bias: bool = False
    o_bias: bool = False
    q_lora_dim: int = 0        # MLA only
    kv_lora_dim: int = 0
    qk_nope_dim: int = 0
    qk_rope_dim: int = 0
    num_experts: int = 0       # routed experts (0 = dense model)
    num_expert_groups: int = 1 # MoGE groups (1 = plain top-k)
    top_k: int = 0
    moe_ffn: int = 0           # routed expert intermediate size
    shared_ffn: int = 0        # total shared-expert intermediate size (0 = none)
    dense_ffn: int = 0         # intermediate size of dense layers
    num_dense_layers: int = 0  # leading dense layers (all layers if num_experts == 0)
    num_mtp_layers: int = 0
    router_scale: bool = False # Pro's learned per-expert scale [1, E]
    expert_bias: bool = False  # Ultra's selection-only bias [E]
    shared_name: str = "shared_expert"
    sandwich_norm: bool = False
    tie_word_embeddings: bool = False
    vision: Optional[VisionShape] = None

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def is_moe_layer(self, i: int) -> bool:
        return self.is_moe and i >= self.num_dense_layers


def _get(cfg: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        if isinstance(cfg, dict):
            if cfg.get(n) is not None:
                return cfg[n]
        elif getattr(cfg, n, None) is not None:
            return getattr(cfg, n)
    return default


def _arch_of(cfg: Any) -> str:
    arch = _get(cfg, "arch", "model_type", default="")
    name = type(cfg).__name__.lower()
    text = f"{arch} {name}".lower()
    if "ultra" in text or _get(cfg, "attention_kv_lora_dim", "kv_lora_rank") is not None:
        return "pangu_ultra_moe"
    if "promoe" in text.replace("_", "") or "pro_moe" in text:
        return "pangu_pro_moe"
    if _get(cfg, "vision_config") is not None or "vl" in text:
        return "mindvl"
    return str(arch or name)


def model_shape(cfg: Any) -> ModelShape:
    """Read a model config (dataclass or config.json dict) by its released field names."""
    if isinstance(cfg, ModelShape):
        return cfg
    arch = _arch_of(cfg)
    vision = None
    vcfg = _get(cfg, "vision_config")
    text = _get(cfg, "text_config", default=cfg)
    if callable(text):  # MindVLConfig.text_config(): the decoder's own config dataclass
        text = text()
    if vcfg is not None:
        vision = VisionShape(
            depth=int(_get(vcfg, "depth", "num_hidden_layers")),
            hidden_size=int(_get(vcfg, "hidden_size", "embed_dim")),
            intermediate_size=int(_get(vcfg, "intermediate_size")),
            num_heads=int(_get(vcfg, "num_heads", "num_attention_heads")),
            patch_size=int(_get(vcfg, "patch_size", default=14)),
            temporal_patch_size=int(_get(vcfg, "temporal_patch_size", default=2)),
            in_channels=int(_get(vcfg, "in_channels", "in_chans", default=3)),
            spatial_merge_size=int(_get(vcfg, "spatial_merge_size", default=2)),
            out_hidden_size=int(_get(vcfg, "out_hidden_size", default=_get(text, "hidden_size"))),
            window_size=int(_get(vcfg, "window_size", default=112)),
            fullatt_block_indexes=tuple(_get(vcfg, "fullatt_block_indexes", default=())),
        )
    H = int(_get(text, "hidden_size"))
    N = int(_get(text, "num_attention_heads"))
    Nkv = int(_get(text, "num_key_value_heads", default=N))
    kv_lora = _get(text, "attention_kv_lora_dim", "kv_lora_rank")
    E = int(_get(text, "num_routed_experts", "num_experts", "n_routed_experts", default=0) or 0)
    top_k = int(_get(text, "num_experts_per_tok", default=0) or 0)
    groups = _get(text, "num_expert_groups", "moe_num_groups", "n_group")
    if groups is None:
        # Pro MoE's config.json has no group key: MoGE picks one expert per group, so groups = top-k.
        groups = top_k if arch == "pangu_pro_moe" else 1
    moe_ffn = int(_get(text, "moe_intermediate_size", default=0) or 0)
    shared = _get(text, "shared_expert_intermediate_size")
    if shared is None:
        shared = int(_get(text, "num_shared_experts", "n_shared_experts", default=0) or 0) * moe_ffn
    L = int(_get(text, "num_hidden_layers"))
    common = dict(
        arch=arch, vocab_size=int(_get(text, "vocab_size")), hidden_size=H, num_layers=L,
        num_heads=N, num_experts=E, num_expert_groups=int(groups or 1), top_k=top_k,
        moe_ffn=moe_ffn, shared_ffn=int(shared), dense_ffn=int(_get(text, "intermediate_size", default=0) or 0),
        num_dense_layers=int(_get(text, "num_dense_layers", "first_k_dense_replace", default=0) or 0)
        if E else L,
        num_mtp_layers=int(_get(text, "num_mtp_layers", "num_nextn_predict_layers", default=0) or 0),
        tie_word_embeddings=bool(_get(text, "tie_word_embeddings", default=False)),
        sandwich_norm=bool(_get(text, "sandwich_norm", default=arch == "pangu_ultra_moe")),
        vision=vision,
    )
    if kv_lora is not None:  # MLA
        nope = int(_get(text, "attention_qk_dim", "qk_nope_head_dim"))
        rope = int(_get(text, "attention_qk_rope_dim", "qk_rope_head_dim"))
        return ModelShape(
            **common, num_kv_heads=N, head_dim=nope + rope,
            v_head_dim=int(_get(text, "attention_v_dim", "v_head_dim")), attention="mla",
            q_lora_dim=int(_get(text, "attention_q_lora_dim", "q_lora_rank")), kv_lora_dim=int(kv_lora),
            qk_nope_dim=nope, qk_rope_dim=rope, expert_bias=bool(E), shared_name="shared_experts")
    hd = int(_get(text, "head_dim", default=H // N))
    pro = arch == "pangu_pro_moe"
    return ModelShape(
        **common, num_kv_heads=Nkv, head_dim=hd, v_head_dim=hd, attention="gqa",
        qkv_bias=bool(_get(text, "attention_bias", "qkv_bias", default=pro or vision is not None)),
        o_bias=bool(_get(text, "o_bias", default=pro and bool(_get(text, "attention_bias", default=True)))),
        router_scale=pro and E > 0)


# --------------------------------------------------------------------------- parameter list

def _layer_params(s: ModelShape, i: int, prefix: str, stacked: bool = True) -> Iterator[tuple[str, tuple]]:
    H = s.hidden_size
    p = f"{prefix}{i}."
    yield p + "input_layernorm.weight", (H,)
    a = p + "self_attn."
    if s.attention == "mla":
        N = s.num_heads
        yield a + "q_a_proj.weight", (s.q_lora_dim, H)
        yield a + "q_a_layernorm.weight", (s.q_lora_dim,)
        yield a + "q_b_proj.weight", (N * s.head_dim, s.q_lora_dim)
        yield a + "kv_a_proj_with_mqa.weight", (s.kv_lora_dim + s.qk_rope_dim, H)
        yield a + "kv_a_layernorm.weight", (s.kv_lora_dim,)
        yield a + "kv_b_proj.weight", (N * (s.qk_nope_dim + s.v_head_dim), s.kv_lora_dim)
        yield a + "o_proj.weight", (H, N * s.v_head_dim)
    else:
        q, kv = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        for proj, out in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            yield a + f"{proj}.weight", (out, H)
            if s.qkv_bias:
                yield a + f"{proj}.bias", (out,)
        yield a + "o_proj.weight", (H, s.num_heads * s.v_head_dim)
        if s.o_bias:
            yield a + "o_proj.bias", (H,)
    yield p + "post_attention_layernorm.weight", (H,)
    if s.sandwich_norm:
        yield p + "pre_mlp_layernorm.weight", (H,)
        yield p + "post_mlp_layernorm.weight", (H,)
    m = p + "mlp."
    if s.is_moe_layer(i if i < s.num_layers else s.num_layers - 1):
        E = s.num_experts
        yield m + "gate.weight", (E, H)
        if s.router_scale:
            yield m + ("gate.router_scale" if stacked else "router_scale"), (1, E)
        if s.expert_bias:
            yield m + "gate.e_score_correction_bias", (E,)
        if stacked:   # our MindSpore training layout: experts stacked for the batched path
            yield m + "experts.gate_proj", (E, s.moe_ffn, H)
            yield m + "experts.up_proj", (E, s.moe_ffn, H)
            yield m + "experts.down_proj", (E, H, s.moe_ffn)
        for e in range(0 if stacked else E):
            yield m + f"experts.{e}.gate_proj.weight", (s.moe_ffn, H)
            yield m + f"experts.{e}.up_proj.weight", (s.moe_ffn, H)
            yield m + f"experts.{e}.down_proj.weight", (H, s.moe_ffn)
        if s.shared_ffn:
            sh = m + s.shared_name + "."
            yield sh + "gate_proj.weight", (s.shared_ffn, H)
            yield sh + "up_proj.weight", (s.shared_ffn, H)
            yield sh + "down_proj.weight", (H, s.shared_ffn)
    else:
        yield m + "gate_proj.weight", (s.dense_ffn, H)
        yield m + "up_proj.weight", (s.dense_ffn, H)
        yield m + "down_proj.weight", (H, s.dense_ffn)


def _vision_params(v: VisionShape, llm_hidden: int) -> Iterator[tuple[str, tuple]]:
    C, F = v.hidden_size, v.intermediate_size
    yield "visual.patch_embed.proj.weight", (C, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    for b in range(v.depth):
        p = f"visual.blocks.{b}."
        yield p + "norm1.weight", (C,)
        yield p + "norm2.weight", (C,)
        yield p + "attn.qkv.weight", (3 * C, C)
        yield p + "attn.qkv.bias", (3 * C,)
        yield p + "attn.proj.weight", (C, C)
        yield p + "attn.proj.bias", (C,)
        for proj, shp in (("gate_proj", (F, C)), ("up_proj", (F, C)), ("down_proj", (C, F))):
            yield p + f"mlp.{proj}.weight", shp
            yield p + f"mlp.{proj}.bias", (shp[0],)
    M = C * v.spatial_merge_size ** 2
    yield "visual.merger.ln_q.weight", (C,)
    yield "visual.merger.mlp.0.weight", (M, M)
    yield "visual.merger.mlp.0.bias", (M,)
    yield "visual.merger.mlp.2.weight", (v.out_hidden_size or llm_hidden, M)
    yield "visual.merger.mlp.2.bias", (v.out_hidden_size or llm_hidden,)


def parameter_shapes(cfg: Any, layout: str = "training") -> list[tuple[str, tuple]]:
    """(name, shape) of every parameter, derived without allocating.

    layout "training": our MindSpore model's names (experts stacked [E, F, H] / [E, H, F],
    `mlp.gate.router_scale`); "serving": the released checkpoint names (one tensor per expert).

    MTP layers follow the last decoder layer as `model.layers.{L+i}.*` (a full decoder layer plus
    DeepSeek-V3-style `enorm`, `hnorm`, `eh_proj`, `shared_head.norm`; embedding/head are shared).
    """
    s = model_shape(cfg)
    if layout not in ("training", "serving"):
        raise ValueError(f"layout: {layout!r}; use 'training' or 'serving'")
    stacked = layout == "training"
    H, V = s.hidden_size, s.vocab_size
    out: list[tuple[str, tuple]] = []
    if s.vision is not None:
        out += list(_vision_params(s.vision, H))
    out.append(("model.embed_tokens.weight", (V, H)))
    for i in range(s.num_layers):
        out += list(_layer_params(s, i, "model.layers.", stacked))
    for j in range(s.num_mtp_layers):
        i = s.num_layers + j
        out += list(_layer_params(s, i, "model.layers.", stacked))
        p = f"model.layers.{i}."
        out += [(p + "enorm.weight", (H,)), (p + "hnorm.weight", (H,)), (p + "eh_proj.weight", (H, 2 * H)),
                (p + "shared_head.norm.weight", (H,))]
    out.append(("model.norm.weight", (H,)))
    if not s.tie_word_embeddings:
        out.append(("lm_head.weight", (V, H)))
    return out


def analytic_parameter_count(cfg: Any) -> tuple[int, int]:
    """(total, active) from `parameter_shapes`; active counts top_k of the routed experts."""
    s = model_shape(cfg)
    total = active = 0
    for name, shp in parameter_shapes(s, "serving"):
        n = math.prod(shp)
        total += n
        if ".experts." in name:
            n = n * s.top_k // s.num_experts
        active += n
    return total, active


def count_parameters(cfg: Any) -> tuple[int, int]:
    """(total, active): pangu's own `count_parameters(cfg)` when the config comes from pangu."""
    if type(cfg).__module__.startswith(("pangu.", "mindvl.")):
        for reg in ("pangu.registry", "mindvl.registry"):
            try:
                total, active = importlib.import_module(reg).count_parameters(cfg)
                return int(total), int(active)
            except (ImportError, ValueError):
                continue
    return analytic_parameter_count(cfg)


# --------------------------------------------------------------------------- config resolution

def resolve_config(model: dict) -> Any:
    """Strategy `model:` section -> config object.

    `{arch, preset}` asks `pangu.registry.get_config(arch, preset)` (the real config classes);
    `{config_json: path}` reads a released HF-style config.json (any model, for what-if planning).
    """
    if model.get("config_json"):
        with open(model["config_json"], encoding="utf-8") as f:
            return json.load(f)
    arch, preset = model.get("arch"), model.get("preset", "full")
    if not arch:
        raise ValueError("model.arch: missing; give `arch` + `preset` (pangu.registry) or `config_json`")
    try:
        registry = importlib.import_module("pangu.registry")
    except ImportError as e:
        raise ValueError(f"model.arch: cannot import pangu.registry ({e}); "
                         "use `model.config_json` until the model configs land") from None
    try:
        cfg = registry.get_config(arch, preset)
    except (KeyError, ValueError) as e:
        raise ValueError(f"model.arch: {arch}/{preset} not in pangu.registry ({e}); "
                         "check the arch and preset names or use `model.config_json`") from None
    overrides = model.get("overrides") or {}
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    return cfg
