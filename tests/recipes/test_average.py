"""Checkpoint averaging: uniform / EMA / grouped formulas against numpy, streaming (one checkpoint open
at a time), strict layout checks, the output directory (init_from / export), the CLI."""

import os

import numpy as np
import pytest
import yaml

from recipes import average
from recipes.io import checkpoint as ck

SHAPES = {"model.embed_tokens.weight": (11, 6), "model.layers.0.mlp.experts.up_proj": (4, 3, 6), "model.norm.weight": (6,)}


def tensors(seed, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}


def make_run(root, name, steps, shapes=SHAPES, config=True):
    """A run directory with checkpoints at `steps` (tensors seeded by the step) and a config.yaml."""
    run = os.path.join(root, name)
    for step in steps:
        ck.save(os.path.join(run, "checkpoints"), step, tensors(step, shapes), None, {"step": step}, keep_last=100)
    if config:
        with open(os.path.join(run, "config.yaml"), "w") as f:
            yaml.safe_dump({"run": {"root": str(root), "name": name}, "model": {"arch": "pangu_pro_moe"}}, f)
    return run


def ckpt(run, step):
    return os.path.join(run, "checkpoints", ck.step_dir_name(step))


def result(out):
    found = ck.latest_valid(os.path.join(out, "checkpoints"))
    return ck.load_tensors(found.path, ck.MODEL_FILE), ck.verify(found.path)


def close(a, b):
    assert sorted(a) == sorted(b)
    for n in a:
        np.testing.assert_allclose(a[n], b[n], rtol=1e-6, atol=1e-6, err_msg=n)


def test_uniform_last_k_of_run(tmp_path):
    run = make_run(tmp_path, "pre", [10, 20, 30, 40])
    average.reset_stats()
    out = str(tmp_path / "avg")
    path = average.average(out, "uniform", run=run, last=3, log=lambda *_: None)
    got, state = result(out)
    close(got, {n: np.mean([tensors(s)[n].astype(np.float64) for s in (20, 30, 40)], axis=0) for n in SHAPES})
    assert state["step"] == 40 and os.path.basename(path) == "step_00000040"
    assert state["averaged"]["method"] == "uniform"
    assert [s["step"] for s in state["averaged"]["sources"]] == [20, 30, 40]
    assert [s["coefficient"] for s in state["averaged"]["sources"]] == pytest.approx([1 / 3] * 3)
    assert average.STATS["peak_open"] == 1 and average.STATS["opened"] == 3  # streaming: one at a time
    # usable as init_from and by evaluate/export (config.yaml next to checkpoints/, renamed run)
    assert ck.resolve_init_from(out) == path
    with open(os.path.join(out, "config.yaml")) as f:
        assert yaml.safe_load(f)["run"] == {"root": str(tmp_path), "name": "avg"}


def test_ema_in_step_order(tmp_path):
    run = make_run(tmp_path, "pre", [5, 15, 25, 35, 45])
    d = 0.7
    out = str(tmp_path / "ema")
    shuffled = [ckpt(run, s) for s in (35, 5, 45, 15, 25)]  # given out of order: sorted by step
    average.average(out, "ema", checkpoints=shuffled, decay=d, log=lambda *_: None)
    got, state = result(out)
    want = {n: tensors(5)[n].astype(np.float64) for n in SHAPES}
    for s in (15, 25, 35, 45):
        want = {n: d * want[n] + (1 - d) * tensors(s)[n] for n in SHAPES}
    close(got, want)
    assert state["averaged"]["decay"] == d and [s["step"] for s in state["averaged"]["sources"]] == [5, 15, 25, 35, 45]
    assert sum(s["coefficient"] for s in state["averaged"]["sources"]) == pytest.approx(1.0)
    assert average.ema_coefficients(1, 0.9) == [1.0]


def test_grouped_merge_cli_and_spec(tmp_path):
    base_run = make_run(tmp_path, "pre", [100])
    sft = make_run(tmp_path, "sft", [1, 2, 3, 4, 5])
    base = ckpt(base_run, 100)
    g1, g2 = [ckpt(sft, s) for s in (1, 2)], [ckpt(sft, s) for s in (3, 4, 5)]
    lam = (0.6, 0.3)
    tb = {n: v.astype(np.float64) for n, v in tensors(100).items()}
    want = {n: tb[n] + lam[0] * np.mean([tensors(s)[n] - tb[n] for s in (1, 2)], axis=0)
            + lam[1] * np.mean([tensors(s)[n] - tb[n] for s in (3, 4, 5)], axis=0) for n in SHAPES}

    average.reset_stats()
    out = str(tmp_path / "merged")
    assert average.main(["--out", out, "--base", base, "--group", f"{lam[0]}:{','.join(g1)}",
                         "--group", f"{lam[1]}:{','.join(g2)}"]) == 0
    got, state = result(out)
    close(got, want)
    assert average.STATS["peak_open"] == 1 and average.STATS["opened"] == 6
    rec = state["averaged"]
    assert rec["method"] == "grouped" and rec["base"] == base
    assert rec["groups"] == [{"weight": lam[0], "checkpoints": g1}, {"weight": lam[1], "checkpoints": g2}]
    assert state["step"] == 100

    spec = tmp_path / "merge.yaml"
    spec.write_text(yaml.safe_dump({"base": base, "groups": [{"weight": lam[0], "checkpoints": g1},
                                                             {"weight": lam[1], "checkpoints": g2}]}))
    out2 = str(tmp_path / "merged2")
    assert average.main(["--out", out2, "--spec", str(spec)]) == 0
    got2, _ = result(out2)
    for n in SHAPES:
        np.testing.assert_array_equal(got2[n], got[n])


def test_layout_mismatch_is_one_line(tmp_path, capsys):
    good = make_run(tmp_path, "a", [1, 2])
    other_shapes = dict(SHAPES, **{"model.layers.0.mlp.experts.up_proj": (4, 3, 7)})
    bad = make_run(tmp_path, "b", [3], shapes=other_shapes)
    with pytest.raises(ValueError) as err:
        average.average(str(tmp_path / "o1"), "uniform", checkpoints=[ckpt(good, 1), ckpt(bad, 3)], log=lambda *_: None)
    msg = str(err.value)
    assert msg.startswith(os.path.join(ckpt(bad, 3), "model.safetensors") + ": tensor model.layers.0.mlp.experts.up_proj "
                          "has shape (4, 3, 7)") and "\n" not in msg
    missing = make_run(tmp_path, "c", [4], shapes={k: v for k, v in SHAPES.items() if k != "model.norm.weight"})
    with pytest.raises(ValueError, match=r"c/checkpoints/step_00000004/model.safetensors: tensor model.norm.weight is missing"):
        average.average(str(tmp_path / "o2"), "ema", checkpoints=[ckpt(good, 1), ckpt(missing, 4)], decay=0.5,
                        log=lambda *_: None)
    assert not os.path.exists(str(tmp_path / "o1" / "checkpoints"))  # nothing written on error
    assert average.main(["--out", str(tmp_path / "o3"), ckpt(good, 1), ckpt(bad, 3)]) == 2
    err_text = capsys.readouterr().err
    assert err_text.startswith("error: ") and err_text.count("\n") == 1
    assert average.main(["--out", str(tmp_path / "o4"), "--method", "ema", ckpt(good, 1)]) == 2  # no --decay
    assert "--decay" in capsys.readouterr().err
    assert average.main(["--out", str(tmp_path / "o5"), "--base", ckpt(good, 1), "--group", "x:y"]) == 2
    assert "--group: cannot parse 'x:y'" in capsys.readouterr().err


def test_average_then_export_tiny_model(tmp_path):
    """A real tiny model run: average two checkpoints, export the result (what the pipeline chains)."""
    from test_export import make_run as make_model_run

    import models
    from recipes.data import load_tokenizer
    from recipes.io import hf as hfio
    from recipes.data import DataConfig

    tok = load_tokenizer(DataConfig())
    run, cfg, model = make_model_run(tmp_path, tok)
    second = {n: p.asnumpy() + 1.0 for n, p in model.parameters_and_names()}
    ck.save(os.path.join(run, "checkpoints"), 9, second, None, {"step": 9}, keep_last=5)
    out = str(tmp_path / "avg")
    average.average(out, "uniform", run=run, last=2, log=lambda *_: None)
    hf = str(tmp_path / "hf")
    hfio.export_run(out, hf, log=lambda *_: None)
    cfg2, state = hfio.import_hf(hf)
    for name, p in model.parameters_and_names():
        np.testing.assert_allclose(state[name], p.asnumpy() + 0.5, rtol=1e-6, atol=1e-6)
    assert cfg2.vocab_size == cfg.vocab_size and models.build_model(cfg2) is not None
