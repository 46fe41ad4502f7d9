"""`python -m recipes.score`: fp32 logits [S, V] for given ids from a serving directory (held to the numpy
DeepSeek-V3 forward), the run it was imported into (the same bits), a MindVL run with images (the same as the
trainer's own batch of that sample) and its export; every bad input refused in one line."""
import dataclasses
import os

import numpy as np
import pytest

import models
from recipes import score
from recipes.engine.config import dump_yaml, load_recipe
from recipes.io import hf, rundir
from np_reference import deepseek_v3_logits
from test_interop import DS_CONFIG, deepseek_tensors, write_checkpoint

IDS = [5, 17, 3, 88, 41, 2, 63, 9, 30, 71, 12, 50]


def run_score(argv, capsys):
    code = score.main(argv)
    captured = capsys.readouterr()
    return code, captured.out.strip(), captured.err.strip()


def test_text_logits_from_a_serving_dir_and_its_imported_run(tmp_path, capsys):
    tensors = deepseek_tensors(DS_CONFIG)
    src = write_checkpoint(str(tmp_path / "ds"), DS_CONFIG, tensors)
    out = str(tmp_path / "served.npy")
    code, line, _ = run_score([src, "--tokens", ",".join(map(str, IDS)), "--out", out], capsys)
    assert code == 0
    logits = np.load(out)
    assert logits.dtype == np.float32 and logits.shape == (len(IDS), DS_CONFIG["vocab_size"])
    assert line == f"logits [12, 96] float32 -> {out} (last position argmax {int(logits[-1].argmax())})"
    want = deepseek_v3_logits(tensors, DS_CONFIG, np.array(IDS))
    assert np.abs(logits - want).max() <= 1e-5 * np.abs(want).max()

    run = str(tmp_path / "run")
    hf.import_to_run(src, run, log=lambda *_: None)
    (tmp_path / "ids.txt").write_text(" ".join(map(str, IDS[:6])) + "\n" + ",".join(map(str, IDS[6:])) + "\n")
    np.save(tmp_path / "ids.npy", np.array(IDS, np.int64))
    for source in (["--tokens-file", str(tmp_path / "ids.txt")], ["--tokens-file", str(tmp_path / "ids.npy")]):
        assert run_score([run, *source, "--out", str(tmp_path / "run.npy")], capsys)[0] == 0
        np.testing.assert_array_equal(np.load(tmp_path / "run.npy"), logits)


def mindvl_run(tmp_path):
    """A freshly initialised MindVL run directory (the tiny SFT recipe's model) and its config."""
    from mindvl.processor import ByteTokenizer

    recipe, cfg = load_recipe("recipes/mindvl/sft_tiny.yaml", ["init_from=null", f"run.root={tmp_path}",
                                                               "run.name=vl"])
    cfg = dataclasses.replace(cfg, vocab_size=ByteTokenizer().vocab_size)        # as the trainer fits it
    model = models.get_spec("mindvl").build(cfg, seed=5)
    run = str(tmp_path / "vl")
    os.makedirs(run)
    dump_yaml(recipe, cfg, os.path.join(run, "config.yaml"))
    rundir.write_run_checkpoint(run, 0, {n: p.asnumpy() for n, p in model.parameters_and_names()}, {}, None)
    return run, recipe, model


def test_mindvl_logits_with_images_equal_the_trainers_batch_and_the_export(tmp_path, capsys):
    from mindvl.data import SyntheticDataset, collate, encode_example
    from mindvl.model import batch_args
    from mindvl.processor import ByteTokenizer

    run, recipe, model = mindvl_run(tmp_path)
    tk = ByteTokenizer()
    sample = encode_example(SyntheticDataset(2, "validation", seed=1)[1], recipe.data.processor(), tk, "chat")
    assert sample.grid_thw.shape[0] == 1
    model.set_train(False)
    want = model(*batch_args(model, collate([sample], [[0]], len(sample.ids), sample.num_patches, tk))).asnumpy()[0]

    np.save(tmp_path / "pv.npy", sample.patches)
    image = ["--pixel-values", str(tmp_path / "pv.npy"), "--grid-thw", ",".join(map(str, sample.grid_thw[0]))]
    tokens = ["--tokens", ",".join(map(str, sample.ids))]
    assert run_score([run, *tokens, *image, "--out", str(tmp_path / "vl.npy")], capsys)[0] == 0
    got = np.load(tmp_path / "vl.npy")
    assert got.shape == (len(sample.ids), tk.vocab_size)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())

    export = str(tmp_path / "export")
    hf.export_run(run, export, log=lambda *_: None)
    assert run_score([export, *tokens, *image, "--out", str(tmp_path / "exported.npy")], capsys)[0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "exported.npy"), got)

    # the image matters: other pixels, other logits after the image (not before it)
    np.save(tmp_path / "pv2.npy", sample.patches + 0.5)
    image2 = ["--pixel-values", str(tmp_path / "pv2.npy"), *image[2:]]
    assert run_score([run, *tokens, *image2, "--out", str(tmp_path / "vl2.npy")], capsys)[0] == 0
    first = int(np.argmax(sample.ids == models.get_config("mindvl", "tiny").image_token_id))
    moved = np.load(tmp_path / "vl2.npy")
    np.testing.assert_allclose(moved[:first], got[:first], rtol=0, atol=1e-6)   # causal (MoE batching: 1e-7)
    assert np.abs(moved[first:] - got[first:]).max() > 1e-4

    t, h, w = sample.grid_thw[0]
    bad = [
        (["--grid-thw", f"{t},{h},{w}"], "--pixel-values and --grid-thw go together: "),
        ([*image[:2], "--grid-thw", f"{t},{h + 2},{w}"],
         f"pixel values: {sample.num_patches} patches, but grid_thw [[{t}, {h + 2}, {w}]] has {t * (h + 2) * w}; "),
        ([*image[:2], "--grid-thw", f"{t},{h}"], f"--grid-thw: '{t},{h}' is not t,h,w (three integers, in patches)"),
        ([*image[:2], "--grid-thw", f"{t},{h + 1},{w}"], "grid_thw: "),
    ]
    for extra, message in bad:
        code, _, err = run_score([run, *tokens, *extra, "--out", str(tmp_path / "x.npy")], capsys)
        assert code == 2 and err.startswith(f"error: {message}") and "\n" not in err, (extra, err)
    text_only = ["--tokens", ",".join(map(str, [i for i in sample.ids if i != 6]))]
    code, _, err = run_score([run, *text_only, *image, "--out", str(tmp_path / "x.npy")], capsys)
    assert code == 2 and err.startswith("error: tokens: image token 6 runs of [] tokens, but grid_thw needs ["), err


def test_bad_inputs_are_refused_in_one_line(tmp_path, capsys):
    src = write_checkpoint(str(tmp_path / "ds"), DS_CONFIG, deepseek_tensors(DS_CONFIG))
    out = ["--out", str(tmp_path / "x.npy")]
    np.save(tmp_path / "floats.npy", np.ones(3, np.float32))
    np.save(tmp_path / "pv.npy", np.ones((4, 1176), np.float32))
    cases = [
        (["--tokens", "1,2,x"], "error: --tokens: 'x' is not a token id; give integers separated by commas or spaces"),
        (["--tokens", " , "], "error: --tokens: no token ids; give at least one, e.g. --tokens 1,2,3"),
        (["--tokens", "1,96"], f"error: tokens: id 96 is outside the vocabulary [0, 96) of {src}"),
        (["--tokens=-1,2"], f"error: tokens: id -1 is outside the vocabulary [0, 96) of {src}"),
        (["--tokens-file", str(tmp_path / "floats.npy")],
         f"error: {tmp_path / 'floats.npy'}: a float32 array of shape (3,); --tokens-file .npy must be a non-empty "
         "1-D integer array"),
        (["--tokens-file", str(tmp_path / "missing.txt")], f"error: {tmp_path / 'missing.txt'}: file not found; "
                                                           "check the path"),
        (["--tokens", "1,2", "--pixel-values", str(tmp_path / "pv.npy"), "--grid-thw", "1,2,2"],
         "error: pixel values: pangu_ultra_moe is a text model; score it with token ids only"),
        (["--tokens", "1,2", "--dtype", "bfloat16"],
         "error: --dtype bfloat16: bf16 matmuls need Ascend (no CPU kernel); use --dtype float32 on CPU"),
    ]
    for argv, message in cases:
        code, _, err = run_score([src, *argv, *out], capsys)
        assert (code, err) == (2, message), argv
    assert not os.path.exists(tmp_path / "x.npy")
    code, _, err = run_score([str(tmp_path / "nowhere"), "--tokens", "1", *out], capsys)
    assert code == 2 and err.startswith(f"error: {tmp_path / 'nowhere'}") and "\n" not in err, err
