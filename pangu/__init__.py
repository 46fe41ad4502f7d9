"""Pangu MoE model family (MindSpore): shared blocks in `pangu.common`, one package per variant
(`pangu.pro_moe`, `pangu.ultra_moe`) with config.py / model.py / convert.py / spec.py, the spec type
(`pangu.spec`), the planner's shapes (`pangu.shape`), generation (`pangu.generate`) and the decoders
by name (`pangu.decoders`). The registry of every architecture is `models`."""
