"""INT8 export (recipes/io/quantize.py, recipes.export --quantize): layout, description, round trip."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from recipes import export as export_cli
from recipes.io import quantize, safetensors_io
from recipes.io.hf import hf_files, import_hf
from tests.recipes.test_export import make_run, tokenizer  # noqa: F401  (fixture)


def test_per_channel_symmetric_round_trip_within_half_a_step():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (6, 10)).astype(np.float32) * np.array([[1e-3], [1], [30], [0.2], [5], [0]], np.float32)
    q, scale = quantize.quantize_weight(w)
    assert q.dtype == np.int8 and scale.shape == (6, 1) and np.abs(q).max() <= 127
    np.testing.assert_allclose(scale[:5, 0], np.abs(w[:5]).max(1) / 127, rtol=1e-6)
    assert scale[5, 0] == 1.0 and not q[5].any()                       # an all-zero row stays zero
    err = np.abs(quantize.dequantize_weight(q, scale, np.zeros_like(scale)) - w)
    assert (err <= scale / 2 + 1e-6 * scale).all()
    assert (np.abs(q).max(1)[:5] == 127).all()                         # the largest entry maps to +-127


@pytest.mark.parametrize("arch,scheme", [("pangu_ultra_moe", "w8a8"), ("pangu_pro_moe", "int8-weight")])
def test_export_quantize_import(tmp_path, tokenizer, arch, scheme):  # noqa: F811
    run, cfg, model = make_run(tmp_path, tokenizer, arch)
    out = str(tmp_path / "q")
    assert export_cli.main([run, "--out", out, "--quantize", scheme]) == 0
    with open(os.path.join(out, quantize.DESCRIPTION_FILE)) as f:
        desc = json.load(f)
    qtype = quantize.SCHEMES[scheme]
    assert desc["model_quant_type"] == qtype
    files = hf_files(out)
    assert set(desc) - {"model_quant_type"} == set(files)               # every tensor described
    quantized = sorted(n for n, t in desc.items() if t == qtype and n.endswith(".weight"))
    kept = {n for n, t in desc.items() if t == quantize.FLOAT}
    # the documented choice: embedding, lm_head, norms, router and MTP layers stay float
    assert "model.embed_tokens.weight" in kept
    assert all(n in kept for n in files if "norm" in n or n.endswith("mlp.gate.weight"))
    L = cfg.num_hidden_layers
    assert not any(n.startswith(f"model.layers.{L}.") for n in quantized)
    assert any("experts" in n for n in quantized) and any("self_attn" in n for n in quantized)

    # within one quantisation step (half, by construction) of the original weights, read back dequantised
    ref_dir = str(tmp_path / "fp32")
    assert export_cli.main([run, "--out", ref_dir]) == 0
    ref = {n: safetensors_io.Reader(os.path.join(ref_dir, f)).get(n) for n, f in hf_files(ref_dir).items()}
    for name in quantized:
        reader = safetensors_io.Reader(os.path.join(out, files[name]))
        assert reader.dtype(name) == "I8"
        scale = reader.get(name[: -len(".weight")] + ".weight_scale")
        assert scale.shape == (ref[name].shape[0], 1)
    readers = {f: safetensors_io.Reader(os.path.join(out, f)) for f in set(files.values())}
    fv_files, fv_readers = quantize.float_view(out, files, readers)
    assert set(fv_files) == set(ref)                                     # scales / offsets hidden
    for name, want in ref.items():
        got = fv_readers[fv_files[name]].get(name)
        if name in quantized:
            scale = readers[files[name]].get(name[: -len(".weight")] + ".weight_scale")
            assert got.dtype == np.float32 and (np.abs(got - want) <= 0.5 * scale * (1 + 1e-5)).all(), name
        else:
            np.testing.assert_array_equal(got, want)
    cfg_q, _ = import_hf(out)
    assert cfg_q == import_hf(ref_dir)[0]
    # the INT8 shards are smaller than the fp32 ones
    size = lambda d: sum(os.path.getsize(os.path.join(d, f)) for f in set(hf_files(d).values()))  # noqa: E731
    assert size(out) < 0.6 * size(ref_dir)


def test_refusals_are_one_line(tmp_path, tokenizer, capsys):  # noqa: F811
    run, _, _ = make_run(tmp_path, tokenizer)
    assert export_cli.main([run, "--out", str(tmp_path / "x"), "--quantize", "w8a8", "--mindir"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--quantize with --mindir" in err and "\n" not in err
    out = str(tmp_path / "q")
    assert export_cli.main([run, "--out", out, "--quantize", "w8a8"]) == 0
    with open(os.path.join(out, quantize.DESCRIPTION_FILE)) as f:
        desc = json.load(f)
    desc["model_quant_type"] = "W4A8_DYNAMIC"
    with open(os.path.join(out, quantize.DESCRIPTION_FILE), "w") as f:
        json.dump(desc, f)
    with pytest.raises(ValueError, match="model_quant_type 'W4A8_DYNAMIC' is not one we read"):
        import_hf(out)
