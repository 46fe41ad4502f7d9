"""Shared Pangu building blocks: Linear/Embedding, RMSNorm, rope tables, GQA attention, SwiGLU MLP,
MoE (pluggable router -> dispatch -> experts -> combine + optional shared expert), init, counting."""
