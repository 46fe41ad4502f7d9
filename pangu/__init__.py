"""Pangu MoE model family (MindSpore): shared blocks in `pangu.common`, one package per variant
(`pangu.pro_moe`, `pangu.ultra_moe`), arch lookup in `pangu.registry`."""
