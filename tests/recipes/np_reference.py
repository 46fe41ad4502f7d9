"""Independent numpy forwards of released layouts, written from the papers / released modelling code, used
to hold imported checkpoints' logits (no MindSpore, no code of the project). Legend: S tokens, H hidden,
N heads, E experts. float64 throughout."""
import numpy as np


def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def swiglu_mlp(x, gate, up, down):
    return (silu(x @ gate.T) * (x @ up.T)) @ down.T


def rope_interleaved(x_SND, pos_S, theta):
    """Rotate consecutive pairs (x[2i], x[2i+1]) by pos * theta^(-2i/D) (DeepSeek-V3 / openPangu MLA)."""
    d = x_SND.shape[-1]
    inv = theta ** (-np.arange(0, d, 2) / d)
    ang = pos_S[:, None, None] * inv[None, None, :]
    c, s = np.cos(ang), np.sin(ang)
    even, odd = x_SND[..., 0::2], x_SND[..., 1::2]
    out = np.empty_like(x_SND)
    out[..., 0::2] = even * c - odd * s
    out[..., 1::2] = even * s + odd * c
    return out


def causal_attention(q_SNd, k_SNd, v_SNv, scale):
    s = q_SNd.shape[0]
    scores = np.einsum("snd,tnd->nst", q_SNd, k_SNd) * scale
    scores = np.where(np.tril(np.ones((s, s), bool))[None], scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("nst,tnv->snv", p, v_SNv)


def deepseek_v3_logits(w: dict, c: dict, ids_S):
    """Main-model logits [S, V] of a DeepSeek-V3-layout checkpoint (`w`: stock tensor names, `c`: its
    config.json) on one sequence: MLA with compressed q and kv, interleaved rope on the rope dims,
    first_k_dense_replace dense layers, then sigmoid routing with the selection bias, group-limited top-k
    (n_group / topk_group: a group scores its two best biased scores), renormalised weights x
    routed_scaling_factor, plus the shared experts. MTP layers do not take part."""
    w = {k: np.asarray(v, np.float64) for k, v in w.items()}
    eps, theta = c["rms_norm_eps"], c.get("rope_theta") or c["rope_parameters"]["rope_theta"]
    n, dn, dr, dv = c["num_attention_heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    kvr, e, k = c["kv_lora_rank"], c["n_routed_experts"], c["num_experts_per_tok"]
    groups, top_groups = c.get("n_group", 1), c.get("topk_group", 1)
    s = len(ids_S)
    pos = np.arange(s, dtype=np.float64)
    h = w["model.embed_tokens.weight"][ids_S]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = rms_norm(h, w[p + "input_layernorm.weight"], eps)
        a = p + "self_attn."
        q = rms_norm(x @ w[a + "q_a_proj.weight"].T, w[a + "q_a_layernorm.weight"], eps) @ w[a + "q_b_proj.weight"].T
        q = q.reshape(s, n, dn + dr)
        kv_a = x @ w[a + "kv_a_proj_with_mqa.weight"].T
        latent, k_rope = kv_a[:, :kvr], kv_a[:, kvr:]
        kv = (rms_norm(latent, w[a + "kv_a_layernorm.weight"], eps) @ w[a + "kv_b_proj.weight"].T).reshape(s, n, dn + dv)
        q_rope = rope_interleaved(q[..., dn:], pos, theta)
        k_rope = np.broadcast_to(rope_interleaved(k_rope[:, None, :], pos, theta), (s, n, dr))
        qq = np.concatenate([q[..., :dn], q_rope], -1)
        kk = np.concatenate([kv[..., :dn], k_rope], -1)
        o = causal_attention(qq, kk, kv[..., dn:], (dn + dr) ** -0.5).reshape(s, n * dv)
        h = h + o @ w[a + "o_proj.weight"].T
        x = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        m = p + "mlp."
        if i < c["first_k_dense_replace"]:
            h = h + swiglu_mlp(x, w[m + "gate_proj.weight"], w[m + "up_proj.weight"], w[m + "down_proj.weight"])
            continue
        scores = 1.0 / (1.0 + np.exp(-(x @ w[m + "gate.weight"].T)))                 # [S, E]
        select = scores + w[m + "gate.e_score_correction_bias"]
        per = select.reshape(s, groups, e // groups)
        group_score = np.sort(per, -1)[..., -2:].sum(-1)                                # [S, G]
        keep = np.zeros((s, groups), bool)
        np.put_along_axis(keep, np.argsort(-group_score, -1, kind="stable")[:, :top_groups], True, -1)
        select = np.where(np.repeat(keep, e // groups, -1), select, -np.inf)
        chosen = np.argsort(-select, -1, kind="stable")[:, :k]
        weights = np.take_along_axis(scores, chosen, -1)
        if c.get("norm_topk_prob", True):
            weights = weights / weights.sum(-1, keepdims=True)
        weights = weights * c["routed_scaling_factor"]
        y = np.zeros_like(x)
        for t in range(s):
            for j in range(k):
                ex = f"{m}experts.{chosen[t, j]}."
                y[t] += weights[t, j] * swiglu_mlp(x[t:t + 1], w[ex + "gate_proj.weight"], w[ex + "up_proj.weight"],
                                                   w[ex + "down_proj.weight"])[0]
        sh = m + "shared_experts."
        y += swiglu_mlp(x, w[sh + "gate_proj.weight"], w[sh + "up_proj.weight"], w[sh + "down_proj.weight"])
        h = h + y
    h = rms_norm(h, w["model.norm.weight"], eps)
    return h @ w["lm_head.weight"].T


def rope_rotate_half(x_SND, pos_3S, theta, sections=None):
    """Rotate-half RoPE (Llama / Qwen2): pair i = (x[i], x[i + D/2]) turns by pos * theta^(-2i/D). pos_3S is
    [S] (1-D RoPE) or [3, S] with M-RoPE `sections` (t, h, w pairs; Qwen2-VL's `mrope_section`): the first
    sections[0] pairs follow the temporal stream, the next the height stream, the rest the width stream."""
    d = x_SND.shape[-1]
    inv = theta ** (-np.arange(0, d, 2) / d)                     # [D/2]
    pos = np.asarray(pos_3S, np.float64)
    if pos.ndim == 1:
        ang = pos[:, None] * inv[None, :]
    else:
        stream = np.repeat(np.arange(3), sections)               # which stream each pair follows
        ang = pos[stream, :].T * inv[None, :]                    # [S, D/2]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x_SND[..., : d // 2], x_SND[..., d // 2:]
    return np.concatenate([a * c - b * s, b * c + a * s], -1)


def qwen2_hidden(w: dict, c: dict, h_SH, pos, sections=None):
    """The Qwen2 decoder stack + final norm on input embeddings [S, H] (`w`: stock `model.*` names, `c`: the
    text keys of config.json): pre-norm, GQA with q/k/v biases and rotate-half (M-)RoPE, SwiGLU."""
    w = {k: np.asarray(v, np.float64) for k, v in w.items()}
    eps, theta = c["rms_norm_eps"], c["rope_theta"]
    n, nkv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    d = c["hidden_size"] // n
    s = h_SH.shape[0]
    h = np.asarray(h_SH, np.float64)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = rms_norm(h, w[p + "input_layernorm.weight"], eps)
        a = p + "self_attn."
        q = (x @ w[a + "q_proj.weight"].T + w[a + "q_proj.bias"]).reshape(s, n, d)
        k = (x @ w[a + "k_proj.weight"].T + w[a + "k_proj.bias"]).reshape(s, nkv, d)
        v = (x @ w[a + "v_proj.weight"].T + w[a + "v_proj.bias"]).reshape(s, nkv, d)
        q, k = rope_rotate_half(q, pos, theta, sections), rope_rotate_half(k, pos, theta, sections)
        k, v = np.repeat(k, n // nkv, 1), np.repeat(v, n // nkv, 1)
        h = h + causal_attention(q, k, v, d ** -0.5).reshape(s, n * d) @ w[a + "o_proj.weight"].T
        x = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        m = p + "mlp."
        h = h + swiglu_mlp(x, w[m + "gate_proj.weight"], w[m + "up_proj.weight"], w[m + "down_proj.weight"])
    return rms_norm(h, w["model.norm.weight"], eps)


def qwen2_head(w: dict, c: dict, h_SH):
    """Logits [S, V] of normed hidden states: lm_head, or the embedding when tie_word_embeddings."""
    head = w["model.embed_tokens.weight"] if c.get("tie_word_embeddings") else w["lm_head.weight"]
    return h_SH @ np.asarray(head, np.float64).T


def qwen2_logits(w: dict, c: dict, ids_S):
    """Logits [S, V] of a Qwen2ForCausalLM checkpoint on one sequence (positions 0..S-1)."""
    h = np.asarray(w["model.embed_tokens.weight"], np.float64)[np.asarray(ids_S)]
    return qwen2_head(w, c, qwen2_hidden(w, c, h, np.arange(len(ids_S))))


def qwen2_vl_positions(ids_S, image_token_id, grids, merge=2):
    """M-RoPE positions [3, S] as Qwen2-VL / Qwen2.5-VL's get_rope_index gives them for images: a text token
    gets one more than the previous maximum in all three streams; an image of llm grid (t, h/merge, w/merge)
    starting at s gets (s + ti, s + hi, s + wi); the text after it resumes at s + max(t, h/merge, w/merge)."""
    out, nxt, i, img = [[], [], []], 0, 0, 0
    ids_S = list(ids_S)
    while i < len(ids_S):
        if ids_S[i] != image_token_id:
            for stream in out:
                stream.append(nxt)
            nxt, i = nxt + 1, i + 1
            continue
        t, h, w = (int(x) for x in grids[img])
        lh, lw = h // merge, w // merge
        for ti in range(t):
            for hi in range(lh):
                for wi in range(lw):
                    out[0].append(nxt + ti)
                    out[1].append(nxt + hi)
                    out[2].append(nxt + wi)
        i, nxt, img = i + t * lh * lw, nxt + max(t, lh, lw), img + 1
    return np.array(out)
