"""Pre-tokenized sources (recipes/data/shards, megatron, mindrecord, prepare): formats, equality with JSONL, mixing,
resume, and the one-line refusals of truncated, out-of-vocabulary and other-tokenizer shards."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import struct

import numpy as np
import pytest

from recipes.data import BATCH_KEYS, DataConfig, build_dataset, generate_corpus, load_tokenizer
from recipes.data.megatron import MegatronShard, MegatronWriter
from recipes.data.prepare import main as prepare_main
from recipes.data.prepare import prepare, record
from recipes.data.shards import Mixture, expand, open_reader, scan_shard, write_record
from recipes.data.synthetic import EXAMPLE_SEPARATOR
from recipes.data.throughput import make_shard, measure

SEQ = 64
N_DOCS, N_VAL = 300, 30
FORMATS = ("megatron", "mindrecord")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("shards")


@pytest.fixture(scope="module")
def cache(work):
    return str(work / "cache")


@pytest.fixture(scope="module")
def corpus_jsonl(work) -> str:
    """The built-in corpus as JSONL, plus long documents (several rows each) and blank-text lines."""
    docs = generate_corpus(N_DOCS, seed=5)
    docs += [EXAMPLE_SEPARATOR.join(generate_corpus(12, seed=100 + i)) for i in range(8)]  # > SEQ tokens
    path = work / "corpus.jsonl"
    lines = [json.dumps({"text": t}) for t in docs]
    lines.insert(7, json.dumps({"text": ""}))  # dropped by the JSONL reader, so by prepare too
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tokenizer(cache):
    return load_tokenizer(DataConfig(vocab_size=256, cache_dir=cache))


def jsonl_cfg(path, tok, cache) -> DataConfig:
    return DataConfig(source="jsonl", path=path, tokenizer_model=str(tok.model_path), num_val_documents=N_VAL,
                      seq_length=SEQ, cache_dir=cache, seed=3)


def shard_cfg(fmt, out, cache, **kw) -> DataConfig:
    return DataConfig(source=fmt, paths=(f"{out}/train_*",), val_paths=(f"{out}/val_*",), num_val_documents=N_VAL,
                      tokenizer_model=f"{out}/tokenizer.model", seq_length=SEQ, cache_dir=cache, **kw)


@pytest.fixture(scope="module")
def prepared(work, corpus_jsonl, tokenizer, cache):
    """Both formats prepared from the JSONL, in several shards and (MindRecord) records that cut documents."""
    out = {}
    for fmt in FORMATS:
        out[fmt] = str(work / fmt)
        prepare(fmt, out[fmt], jsonl_cfg(corpus_jsonl, tokenizer, cache), shard_tokens=3000, record_tokens=37,
                log=lambda *_: None)
    return out


def assert_same_batches(a, b):
    for x, y in zip(a, b, strict=True):
        for k in BATCH_KEYS:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# --------------------------------------------------------------------------------------------------
# Same documents, same rows, same order as JSONL


@pytest.mark.parametrize("fmt", FORMATS)
def test_prepared_shards_stream_the_jsonl_rows_in_the_jsonl_order(fmt, prepared, corpus_jsonl, tokenizer, cache):
    out = prepared[fmt]
    assert len(glob.glob(f"{out}/train_*.tokenizer.json")) >= 3  # several shards, one source
    text = build_dataset(jsonl_cfg(corpus_jsonl, tokenizer, cache), "train")
    shards = build_dataset(shard_cfg(fmt, out, cache), "train")
    assert shards.num_rows == text.num_rows and shards.seq_length == SEQ
    stats, expected = shards.packing_stats(), text.packing_stats()
    for key in ("num_documents", "num_rows", "num_tokens", "num_targets", "pieces_per_row"):
        assert stats[key] == expected[key], key
    assert expected["pieces_per_row"] > 1  # documents continue across rows: the long ones are split
    steps = 2 * text.num_rows // 8 + 3  # crosses two epoch boundaries
    assert_same_batches(text.batches(8, start=5, seed=9, num_batches=steps),
                        shards.batches(8, start=5, seed=9, num_batches=steps))
    assert_same_batches(text.eval_batches(16), shards.eval_batches(16))
    val_text, val_shards = build_dataset(jsonl_cfg(corpus_jsonl, tokenizer, cache), "val"), \
        build_dataset(shard_cfg(fmt, out, cache), "val")
    for k in BATCH_KEYS:
        np.testing.assert_array_equal(val_shards.rows[k], val_text.rows[k], err_msg=k)


def test_builtin_corpus_prepared_as_megatron_equals_the_synthetic_source(work, cache):
    out = str(work / "builtin")
    prepare("megatron", out, DataConfig(num_documents=200, num_val_documents=20, cache_dir=cache),
            log=lambda *_: None)
    synthetic = DataConfig(num_documents=200, num_val_documents=20, seq_length=SEQ, cache_dir=cache)
    shards = dataclasses.replace(shard_cfg("megatron", out, cache), num_val_documents=20)
    assert_same_batches(build_dataset(synthetic).batches(4, num_batches=40),
                        build_dataset(shards).batches(4, num_batches=40))
    np.testing.assert_array_equal(build_dataset(synthetic, "val").rows["labels"],
                                  build_dataset(shards, "val").rows["labels"])
    assert MegatronShard(f"{out}/train_00000").dtype == np.uint16  # Megatron's choice below 65500 ids


# --------------------------------------------------------------------------------------------------
# The published layouts, built byte by byte from their specification


def write_megatron_by_hand(prefix, sequences, documents, code=4, dtype=np.int32):
    """A .bin/.idx pair as Megatron's _IndexWriter lays it out (not using our writer)."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int32)
    pointers = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64) * np.dtype(dtype).itemsize
    with open(f"{prefix}.bin", "wb") as f:
        for s in sequences:
            f.write(np.asarray(s, dtype=dtype).tobytes())
    with open(f"{prefix}.idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", code))
        f.write(struct.pack("<Q", len(sequences)) + struct.pack("<Q", len(documents)))
        f.write(lengths.tobytes() + pointers.tobytes() + np.asarray(documents, dtype=np.int64).tobytes())


def test_megatron_layout_documents_sentences_and_eod(work, tokenizer):
    eod = tokenizer.eod_id
    prefix = str(work / "by_hand")
    # doc 0: two sentences (--split-sentences) ending in eod; doc 1: no eod; doc 2: a lone eod (empty)
    sequences = [[10, 11], [12, eod], [20, 21, 22], [eod]]
    write_megatron_by_hand(prefix, sequences, documents=[0, 2, 3, 4])
    reader = MegatronShard(prefix)
    scan = scan_shard("megatron", reader, eod)
    assert (scan["raw_documents"], scan["raw_tokens"], scan["max_id"]) == (3, 8, 22)
    assert scan["doc_start"].tolist() == [0, 4] and scan["doc_len"].tolist() == [3, 3]  # empty one dropped
    assert reader.tokens(4, 7).tolist() == [20, 21, 22]
    # our writer produces the same bytes layout (uint16 below 65500 ids)
    w = MegatronWriter(str(work / "ours"), vocab_size=tokenizer.vocab_size)
    for doc in ([10, 11, 12, eod], [20, 21, 22, eod]):
        w.add(np.array(doc))
    w.close()
    idx = (work / "ours.idx").read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00" and struct.unpack("<QBQQ", idx[9:34]) == (1, 8, 2, 3)
    assert np.frombuffer((work / "ours.bin").read_bytes(), np.uint16).tolist() == [10, 11, 12, eod, 20, 21, 22, eod]
    # float token files and multimodal indexes are refused in one line
    write_megatron_by_hand(str(work / "floats"), [[1.0, 2.0]], [0, 1], code=7, dtype=np.float32)
    with pytest.raises(ValueError, match=r"floats\.idx: dtype code 7 is a float type, not token ids"):
        MegatronShard(str(work / "floats"))
    write_megatron_by_hand(str(work / "mm"), [[1, 2]], [0, 1])
    with open(work / "mm.idx", "ab") as f:
        f.write(b"\x00")  # one sequence mode byte
    with pytest.raises(ValueError, match=r"mm\.idx: a multimodal index"):
        MegatronShard(str(work / "mm"))


def test_mindrecord_mindformers_layouts_give_the_same_documents(work, tokenizer):
    from mindspore.mindrecord import FileWriter

    eod = tokenizer.eod_id
    docs = [[7, 8, 9], [10] * 11, [12, 13], [14, 15, 16, 17]]
    stream = [t for d in docs for t in d + [eod]]

    def write(name, records, dtype="int32"):  # as MindFormers' converters do: default page/header sizes
        path = str(work / name)
        writer = FileWriter(path, shard_num=1, overwrite=True)
        writer.add_schema({"input_ids": {"type": dtype, "shape": [-1]}}, "wiki")
        writer.write_raw_data([{"input_ids": np.array(r, dtype=dtype)} for r in records])
        writer.commit()
        return scan_shard("mindrecord", open_reader("mindrecord", path), eod)

    stitched = write("stitched.mindrecord", [stream[i : i + 5] for i in range(0, len(stream), 5)])  # seq_length+1 = 5
    per_doc = write("per_doc.mindrecord", [d + [eod] for d in docs], dtype="int64")
    no_tail_eod = write("no_tail.mindrecord", [stream[:-1]])
    for scan in (stitched, per_doc, no_tail_eod):
        assert scan["doc_len"].tolist() == [3, 11, 2, 4]
        assert scan["doc_start"].tolist() == [0, 4, 16, 19]
    assert (stitched["raw_documents"], stitched["raw_tokens"]) == (4, len(stream))
    assert stitched["record_starts"].tolist() == list(range(0, len(stream), 5)) + [len(stream)]
    # a FileWriter(shard_num=2) conversion: each file is read alone (a glob lists both)
    writer = FileWriter(str(work / "parts"), shard_num=2, overwrite=True)
    writer.add_schema({"input_ids": {"type": "int32", "shape": [-1]}}, "wiki")
    writer.write_raw_data([{"input_ids": np.array(d + [eod], dtype=np.int32)} for d in docs])
    writer.commit()
    parts = expand("mindrecord", str(work / "parts*"), "data.paths[0]")
    assert parts == [str(work / "parts0"), str(work / "parts1")]
    lengths = [scan_shard("mindrecord", open_reader("mindrecord", p), eod)["doc_len"].tolist() for p in parts]
    assert sum(lengths, []) == [3, 11, 2, 4] and all(lengths)
    path = str(work / "other_column.mindrecord")
    writer = FileWriter(path, shard_num=1, overwrite=True)
    writer.add_schema({"tokens": {"type": "int32", "shape": [-1]}}, "x")
    writer.write_raw_data([{"tokens": np.arange(3, dtype=np.int32)}])
    writer.commit()
    with pytest.raises(ValueError, match=r"other_column\.mindrecord: no 'input_ids' column \(columns: tokens\)"):
        open_reader("mindrecord", path)


# --------------------------------------------------------------------------------------------------
# Mixing and resume


def test_mixture_honours_weights_exactly_and_locates_by_position():
    mix = Mixture([0.7, 0.3], ["a", "b"])
    source, local = mix.locate(np.arange(20_000))
    assert (source == 0).sum() == 14_000 and (source == 1).sum() == 6_000
    for i in (0, 1):  # each source's positions are 0, 1, 2, ... in stream order
        np.testing.assert_array_equal(local[source == i], np.arange((source == i).sum()))
    assert max(abs((source[:n] == 0).sum() - 0.7 * n) for n in range(1, 20_000, 97)) <= 1  # spread evenly
    s2, l2 = mix.locate(np.array([12_345, 7]))
    assert (s2.tolist(), l2.tolist()) == ([source[12_345], source[7]], [local[12_345], local[7]])
    with pytest.raises(ValueError, match=r"data.weights: b gets 1.00e-05 of the mix, below 1/10000"):
        Mixture([1.0, 1e-5], ["a", "b"])
    single = Mixture([5.0], ["a"])
    assert single.locate(np.arange(5))[1].tolist() == [0, 1, 2, 3, 4]


def test_mixed_sources_resume_exactly_and_visit_every_row(prepared, work, cache, tokenizer):
    out = str(work / "second")
    prepare("megatron", out, DataConfig(num_documents=150, num_val_documents=0, seed=7, cache_dir=cache),
            log=lambda *_: None)
    cfg = dataclasses.replace(shard_cfg("megatron", prepared["megatron"], cache),
                              paths=(f"{prepared['megatron']}/train_*", f"{out}/train_*"), weights=(3.0, 1.0))
    ds = build_dataset(cfg)
    n0, n1 = (s.num_rows for s in ds.sources)
    full = list(ds.batches(6, seed=2, num_batches=60))
    for k in (1, 17, 59):
        assert_same_batches(full[k:], build_dataset(cfg).batches(6, start=6 * k, seed=2, num_batches=60 - k))
    source, rows = ds.sample_rows(0, 4 * (n0 + n1), seed=2)
    assert abs((source == 0).mean() - 0.75) < 0.01
    first = rows[source == 0][:n0]
    assert sorted(first.tolist()) == list(range(n0))  # an epoch of source 0 visits each row once
    assert not np.array_equal(first, rows[source == 0][n0 : 2 * n0])  # and the next epoch reshuffles
    assert sorted(rows[source == 1][:n1].tolist()) == list(range(n1))
    assert [s["weight"] for s in ds.packing_stats()["sources"]] == [0.75, 0.25]


# --------------------------------------------------------------------------------------------------
# Refusals: one line naming the file


def one_line_error(cfg, split="train") -> str:
    with pytest.raises(ValueError) as err:
        build_dataset(cfg, split)
    msg = str(err.value)
    assert "\n" not in msg and "; " in msg
    return msg


def copy_shards(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_truncated_shards_are_refused_naming_the_file(prepared, work, cache):
    meg = copy_shards(prepared["megatron"], work / "trunc_meg")
    cfg = shard_cfg("megatron", meg, cache)
    with open(f"{meg}/train_00001.bin", "r+b") as f:
        f.truncate(os.path.getsize(f"{meg}/train_00001.bin") - 6)
    assert one_line_error(cfg).startswith(f"{meg}/train_00001.bin: truncated: ")
    shutil.copy(f"{prepared['megatron']}/train_00001.bin", f"{meg}/train_00001.bin")
    with open(f"{meg}/val_00000.idx", "r+b") as f:
        f.truncate(40)
    assert one_line_error(cfg, "val").startswith(f"{meg}/val_00000.idx: truncated: 40 bytes")
    mr = copy_shards(prepared["mindrecord"], work / "trunc_mr")
    path = f"{mr}/train_00000.mindrecord"
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    msg = one_line_error(shard_cfg("mindrecord", mr, cache))
    assert msg.startswith(f"{path}: MindSpore cannot read it as MindRecord") and "truncated" in msg


def test_ids_outside_the_vocabulary_are_refused_naming_the_file(work, cache, tokenizer):
    out = work / "oov"
    out.mkdir()
    shutil.copy(tokenizer.model_path, out / "tokenizer.model")
    for split, bad in (("train", tokenizer.vocab_size + 5), ("val", 3)):
        w = MegatronWriter(str(out / f"{split}_00000"), vocab_size=70_000)  # int32 tokens
        docs = [np.array([5, 6, bad, tokenizer.eod_id])] * N_VAL
        for d in docs:
            w.add(d)
        w.close()  # a record that claims the run's tokenizer: only the ids are wrong
        write_record(str(out / f"{split}_00000"), "megatron", tokenizer, N_VAL, 4 * N_VAL, bad, {"tool": "test"})
    msg = one_line_error(shard_cfg("megatron", str(out), cache))
    assert msg.startswith(f"{out}/train_00000.bin: token id {tokenizer.vocab_size + 5} is outside the vocabulary")


def test_shards_of_another_tokenizer_or_without_a_record_are_refused(prepared, work, cache, corpus_jsonl):
    other = load_tokenizer(DataConfig(source="jsonl", path=corpus_jsonl, vocab_size=200, num_val_documents=N_VAL,
                                      cache_dir=cache))
    for fmt in FORMATS:
        cfg = dataclasses.replace(shard_cfg(fmt, prepared[fmt], cache), tokenizer_model=str(other.model_path))
        msg = one_line_error(cfg)
        data_file = f"{prepared[fmt]}/train_00000" + (".bin" if fmt == "megatron" else ".mindrecord")
        assert msg.startswith(f"{data_file}: made with another tokenizer") and other.sha256[:12] in msg
    bare = copy_shards(prepared["megatron"], work / "bare")
    os.remove(f"{bare}/train_00002.tokenizer.json")
    msg = one_line_error(shard_cfg("megatron", bare, cache))
    assert msg.startswith(f"{bare}/train_00002.tokenizer.json: tokenizer record not found")
    # shards made elsewhere get their record from `prepare --record`, which reads every id first
    record("megatron", [f"{bare}/train_00002"], f"{bare}/tokenizer.model", log=lambda *_: None)
    assert build_dataset(shard_cfg("megatron", bare, cache)).num_rows > 0
    with pytest.raises(ValueError, match=r"train_00002\.bin: token id \d+ is outside the vocabulary"):
        record("megatron", [f"{bare}/train_00002"], str(tiny_tokenizer(work)), overwrite=True, log=lambda *_: None)


def tiny_tokenizer(work):
    from recipes.data import train_tokenizer

    return train_tokenizer(["ab ba"] * 50, 16, work / "tiny.model").model_path


def test_a_changed_shard_is_refused_against_its_record(prepared, work, cache, tokenizer):
    meg = copy_shards(prepared["megatron"], work / "changed")
    rec = json.loads(open(f"{meg}/train_00000.tokenizer.json").read())
    rec["documents"] += 1
    open(f"{meg}/train_00000.tokenizer.json", "w").write(json.dumps(rec))
    msg = one_line_error(shard_cfg("megatron", meg, cache))
    assert msg.startswith(f"{meg}/train_00000.bin: holds {rec['documents'] - 1} documents")


@pytest.mark.parametrize("change, field", [
    (dict(paths=()), "paths"),
    (dict(weights=(1.0, 2.0)), "weights"),
    (dict(weights=(0.0,)), "weights"),
    (dict(val_paths=()), "val_paths"),
    (dict(num_val_documents=0), "val_paths"),
    (dict(tokenizer_model=None), "tokenizer_model"),
    (dict(path="x.jsonl"), "path"),
])
def test_shard_config_errors_name_the_field(change, field):
    cfg = dataclasses.replace(shard_cfg("megatron", "d", "c"), **change)
    with pytest.raises(ValueError) as err:
        cfg.validate()
    assert str(err.value).startswith(f"{field}: ") and "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"^paths: only for source=megatron\|mindrecord"):
        DataConfig(paths=("a",)).validate()


def test_prepare_cli_writes_and_refuses_in_one_line(work, cache, capsys):
    out = str(work / "cli")
    args = ["--format", "mindrecord", "--out", out, "--num-documents", "40", "--num-val-documents", "4",
            "--cache-dir", cache, "--record-tokens", "129"]
    assert prepare_main(args) == 0
    printed = capsys.readouterr().out
    assert f"paths: [{out}/train_*]" in printed and f"tokenizer_model: {out}/tokenizer.model" in printed
    assert prepare_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --out {out}: already holds train_00000.mindrecord; choose another --out or pass "
                   "--overwrite to replace its shards")
    assert prepare_main(args + ["--overwrite"]) == 0
    assert prepare_main(["--format", "megatron", "--out", out, "--input", str(work / "missing.jsonl")]) == 2
    assert capsys.readouterr().err.startswith(f"error: data.path={work}/missing.jsonl: file not found")


@pytest.mark.parametrize("fmt", FORMATS)
def test_throughput_tool_measures_the_shard_it_wrote(fmt, work, cache, tokenizer):
    out = str(work / f"throughput_{fmt}")
    path = make_shard(fmt, out, tokens=30_000, median_doc=80, tokenizer=tokenizer)
    rec = json.loads(open(f"{path}.tokenizer.json").read())
    assert rec["tokens"] >= 30_000 and rec["tokenizer"]["sha256"] == tokenizer.sha256
    r = measure(fmt, out, seq_length=256, batch_size=8, seconds=0.2, cache_dir=cache, tokenizer=tokenizer)
    assert r["tokens"] == rec["tokens"] and r["documents"] == rec["documents"]
    assert r["rows"] * 256 >= r["tokens"] and r["pieces_per_row"] > 1 and r["rows_per_s"] > 0
