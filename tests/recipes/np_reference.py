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
