"""Tests of the data pipeline (recipes/data): corpus, tokenizer, packer, cache, batch stream, JSONL."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from recipes.data import (
    BATCH_KEYS,
    BUILD_EVENTS,
    DataConfig,
    build_dataset,
    generate_corpus,
    pack_documents,
    resolve_cache_dir,
    train_tokenizer,
)
from recipes.data.synthetic import EXAMPLE_SEPARATOR

SMALL = dict(num_documents=400, num_val_documents=40, seq_length=64, vocab_size=256)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data_cache")


@pytest.fixture(scope="module")
def small_cfg(cache_dir) -> DataConfig:
    return DataConfig(cache_dir=str(cache_dir), **SMALL)


@pytest.fixture(scope="module")
def small_train(small_cfg):
    return build_dataset(small_cfg, "train")


# --------------------------------------------------------------------------------------------------
# Synthetic corpus


def _check_example(example: str) -> None:
    """Each task's answer is the right function of its prompt."""
    if m := re.fullmatch(r"(\d+)([+-])(\d+)=(\d+)", example):
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        assert c == (a + b if op == "+" else a - b) and c >= 0
    elif m := re.fullmatch(r"copy: ([a-h ]+) -> ([a-h ]+)", example):
        assert m[1] == m[2]
    elif m := re.fullmatch(r"reverse: ([a-h ]+) -> ([a-h ]+)", example):
        assert m[2].split() == m[1].split()[::-1]
    elif m := re.fullmatch(r"((?:[a-h]=\d )+)\? ([a-h]) -> (\d)", example):
        pairs = dict(p.split("=") for p in m[1].split())
        assert pairs[m[2]] == m[3]
    elif m := re.fullmatch(r"balanced: ([() ]+) -> (yes|no)", example):
        depth, ok = 0, True
        for b in m[1].split():
            depth += 1 if b == "(" else -1
            ok = ok and depth >= 0
        assert (ok and depth == 0) == (m[2] == "yes")
    elif m := re.fullmatch(r"count ([a-d]): ([a-d ]+) -> (\d+)", example):
        assert m[2].split().count(m[1]) == int(m[3])
    else:
        raise AssertionError(f"unrecognised example {example!r}")


def test_synthetic_corpus_is_seeded_correct_and_mixed():
    a = generate_corpus(300, seed=7)
    b = generate_corpus(300, seed=7)
    assert "\n".join(a).encode() == "\n".join(b).encode()
    assert generate_corpus(300, seed=8) != a
    assert generate_corpus(300, seed=7, split="val") != a
    for doc in a:
        examples = doc.split(EXAMPLE_SEPARATOR)
        assert 1 <= len(examples) <= 4
        for ex in examples:
            _check_example(ex)
    starts = {doc.split(":")[0].split(" ")[0] for doc in a}
    assert {"copy", "reverse", "balanced", "count"} <= starts
    answers = [doc.rsplit("-> ", 1)[-1] for doc in a if doc.startswith("balanced")]
    assert 0.2 < answers.count("yes") / len(answers) < 0.8  # both classes are common
    only_copy = generate_corpus(50, seed=7, tasks=("copy",), max_examples_per_document=1)
    assert all(d.startswith("copy: ") and EXAMPLE_SEPARATOR not in d for d in only_copy)


# --------------------------------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_is_deterministic_and_round_trips(tmp_path):
    texts = generate_corpus(300, seed=3) + ["two\nlines  with spaces", " leading space"]
    t1 = train_tokenizer(texts, 256, tmp_path / "a.model")
    t2 = train_tokenizer(texts, 256, tmp_path / "b.model")
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert (t1.pad_id, t1.bos_id, t1.eod_id) == (0, 2, 3)
    assert t1.id_to_piece(t1.eod_id) == "<eod>" and t1.id_to_piece(0) == "<pad>"
    assert 40 < t1.vocab_size <= 256  # an upper bound: the synthetic corpus has fewer pieces
    for text in texts[:50] + texts[-2:]:
        ids = t1.encode(text)
        assert t1.unk_id not in ids
        assert t1.decode(ids) == text
    assert t1.encode_batch(texts[:5]) == [t1.encode(t) for t in texts[:5]]
    # Digits are single pieces, so arithmetic answers are predicted digit by digit.
    assert [t1.id_to_piece(i) for i in t1.encode("12+7=19")][-2:] == ["1", "9"]


# --------------------------------------------------------------------------------------------------
# Packer


def test_packer_on_hand_made_documents():
    eod, pad = 3, 0
    docs = [[10, 11, 12], [20, 21], list(range(30, 40)), [40]]
    rows = pack_documents(docs, seq_length=8, eod_id=eod, pad_id=pad)
    expected = {
        # doc A (4 with eod) + doc B (3) + first token of doc C (11 > 8, so it is split)
        "input_ids": [[10, 11, 12, 3, 20, 21, 3, 30], list(range(31, 39)), [39, 3, 40, 3, 0, 0, 0, 0]],
        # the row-end token of the split doc C keeps its target (31, 39); eod predicts nothing
        "labels": [[11, 12, 3, 0, 21, 3, 0, 31], list(range(32, 40)), [3, 0, 3, 0, 0, 0, 0, 0]],
        "loss_mask": [[1, 1, 1, 0, 1, 1, 0, 1], [1] * 8, [1, 0, 1, 0, 0, 0, 0, 0]],
        "position_ids": [[0, 1, 2, 3, 0, 1, 2, 0], list(range(8)), [0, 1, 0, 1, 0, 0, 0, 0]],
        "segment_ids": [[1, 1, 1, 1, 2, 2, 2, 3], [1] * 8, [1, 1, 2, 2, 0, 0, 0, 0]],
    }
    for key in BATCH_KEYS:
        np.testing.assert_array_equal(rows[key], np.array(expected[key]), err_msg=key)
    assert rows["input_ids"].dtype == np.int32 and rows["loss_mask"].dtype == np.float32
    assert rows["position_ids"].dtype == np.int32 and rows["segment_ids"].dtype == np.int32


def test_packer_moves_a_short_document_to_a_new_row_instead_of_cutting_it():
    rows = pack_documents([[5, 6, 7, 8, 9], [20, 21, 22], []], seq_length=8, eod_id=3, pad_id=0)
    np.testing.assert_array_equal(rows["input_ids"], [[5, 6, 7, 8, 9, 3, 0, 0], [20, 21, 22, 3, 0, 0, 0, 0]])
    np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]])
    assert pack_documents([], seq_length=8, eod_id=3, pad_id=0)["input_ids"].shape == (0, 8)


def test_packed_rows_invariants(small_train):
    tok = small_train.tokenizer
    r = small_train.rows
    ids, labels, mask, pos, seg = (r[k] for k in BATCH_KEYS)
    assert ids.shape == (small_train.num_rows, 64)
    # padding: pad id, no target, segment 0 and only at the row tail
    padding = seg == 0
    assert (ids[padding] == tok.pad_id).all() and (mask[padding] == 0).all() and (labels[padding] == 0).all()
    assert (np.diff(padding.astype(int), axis=1) >= 0).all()
    # a target is the next token of the same segment (the last column may point into the next row)
    inner = mask[:, :-1] == 1
    assert (labels[:, :-1][inner] == ids[:, 1:][inner]).all()
    assert (seg[:, :-1][inner] == seg[:, 1:][inner]).all()
    assert (labels[mask == 0] == 0).all()
    # exactly the eod tokens lack a target (all documents here are shorter than a row)
    real = seg > 0
    assert ((mask == 0) & real).sum() == (ids == tok.eod_id).sum() == small_train.packing_stats()["num_documents"]
    assert (ids[(mask == 0) & real] == tok.eod_id).all()
    # positions restart at 0 exactly where a segment starts; segments count 1..n
    seg_start = np.concatenate([np.ones((seg.shape[0], 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1) & real
    assert ((pos == 0) & real).sum() == seg_start.sum()
    assert (pos[seg_start] == 0).all()
    assert (np.diff(np.where(real, seg, seg.max(axis=1, keepdims=True)), axis=1) >= 0).all()
    stats = small_train.packing_stats()
    assert stats["num_tokens"] == int(real.sum()) and stats["num_rows"] == small_train.num_rows
    assert 0.6 < stats["non_padding_fraction"] == pytest.approx(real.mean())


# --------------------------------------------------------------------------------------------------
# Build, cache, determinism


def test_build_is_deterministic_across_caches(small_train, small_cfg, tmp_path):
    other = build_dataset(dataclasses.replace(small_cfg, cache_dir=str(tmp_path)), "train")
    assert other.tokenizer.model_path.read_bytes() == small_train.tokenizer.model_path.read_bytes()
    for key in BATCH_KEYS:
        np.testing.assert_array_equal(other.rows[key], small_train.rows[key], err_msg=key)
    # the rows decode back to the generated documents, in order
    corpus = generate_corpus(SMALL["num_documents"], seed=small_cfg.seed)
    row = other.rows["input_ids"][0]
    first_docs = other.tokenizer.decode(row[: np.flatnonzero(row == other.tokenizer.eod_id)[0]])
    assert first_docs == corpus[0]


def test_cache_is_reused_and_keyed(small_train, small_cfg, cache_dir):
    events = dict(BUILD_EVENTS)
    rows_file = small_train.cache_path / "rows.mindrecord"
    mtime = os.stat(rows_file).st_mtime_ns
    again = build_dataset(small_cfg, "train")
    assert dict(BUILD_EVENTS) == events  # no training, no writing
    assert os.stat(rows_file).st_mtime_ns == mtime and again.cache_path == small_train.cache_path
    np.testing.assert_array_equal(again.rows["labels"], small_train.rows["labels"])
    # a different seq_length repacks but reuses the tokenizer
    longer = build_dataset(dataclasses.replace(small_cfg, seq_length=96), "train")
    assert BUILD_EVENTS["rows_written"] == events.get("rows_written", 0) + 1
    assert BUILD_EVENTS["tokenizer_trained"] == events.get("tokenizer_trained", 0)
    assert longer.seq_length == 96 and longer.tokenizer.sha256 == small_train.tokenizer.sha256
    # no temporary directories are left behind
    assert not [p for p in cache_dir.iterdir() if p.name.endswith(".tmp")]


def test_validation_split_is_held_out(small_cfg, small_train):
    val = build_dataset(small_cfg, "val")
    assert val.tokenizer.sha256 == small_train.tokenizer.sha256
    assert val.packing_stats()["num_documents"] == SMALL["num_val_documents"]
    train_docs = set(generate_corpus(SMALL["num_documents"], seed=small_cfg.seed))
    tok = val.tokenizer
    ids = val.rows["input_ids"].reshape(-1)
    eods = np.flatnonzero(ids == tok.eod_id)
    starts = np.concatenate([[0], eods[:-1] + 1])
    val_docs = [tok.decode([i for i in ids[s:e] if i != tok.pad_id]) for s, e in zip(starts, eods)]
    assert len(val_docs) == SMALL["num_val_documents"]
    assert not set(val_docs) & train_docs
    batches = list(val.eval_batches(batch_size=8))
    assert len(batches) == -(-val.num_rows // 8)
    last = batches[-1]
    assert last["input_ids"].shape == (8, 64)
    n_real = val.num_rows - 8 * (len(batches) - 1)
    assert (last["loss_mask"][n_real:] == 0).all() and (last["segment_ids"][n_real:] == 0).all()
    with pytest.raises(ValueError, match="num_val_documents=0"):
        build_dataset(dataclasses.replace(small_cfg, num_val_documents=0), "val")


# --------------------------------------------------------------------------------------------------
# Batch stream and resume


def test_batches_resume_exactly_and_shuffle_per_epoch(small_train):
    n, bs = small_train.num_rows, 7
    steps = (3 * n) // bs + 2  # crosses at least two epoch boundaries
    full = list(small_train.batches(bs, seed=11, num_batches=steps))
    assert len(full) == steps and full[0]["input_ids"].shape == (bs, 64)
    for k in (1, steps // 2, steps - 1):
        resumed = list(small_train.batches(bs, start=k * bs, seed=11, num_batches=steps - k))
        for a, b in zip(full[k:], resumed):
            for key in BATCH_KEYS:
                np.testing.assert_array_equal(a[key], b[key])
    # an endless stream resumed from a stored position continues identically
    stream = small_train.batches(bs, seed=11)
    for _ in range(5):
        next(stream)
    np.testing.assert_array_equal(next(stream)["input_ids"], full[5]["input_ids"])
    # each epoch visits every row once, in an order that depends on seed + epoch
    order = small_train.sample_rows(0, 2 * n, seed=11)
    assert sorted(order[:n]) == list(range(n)) and sorted(order[n:]) == list(range(n))
    assert not np.array_equal(order[:n], order[n:])
    np.testing.assert_array_equal(order[n:], np.random.default_rng(12).permutation(n))
    np.testing.assert_array_equal(small_train.sample_rows(n, n, seed=10), np.random.default_rng(11).permutation(n))
    with pytest.raises(ValueError, match="batch_size"):
        small_train.batches(0)


# --------------------------------------------------------------------------------------------------
# JSONL


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs.\nSecond line.",
    "How vexingly quick daft zebras jump!",
    "Sphinx of black quartz, judge my vow.",
] * 6


def test_jsonl_source_trains_tokenizer_and_packs_documents(tmp_path, cache_dir):
    path = _write_jsonl(tmp_path / "docs.jsonl", [json.dumps({"text": t}) for t in TEXTS] + [""])
    cfg = DataConfig(source="jsonl", path=str(path), num_val_documents=4, seq_length=48, vocab_size=128,
                     cache_dir=str(cache_dir))
    train = build_dataset(cfg, "train")
    val = build_dataset(cfg, "val")
    tok = train.tokenizer
    assert train.packing_stats()["num_documents"] == 20 and val.packing_stats()["num_documents"] == 4
    # every document comes back intact (split rows are rejoined by reading the eods)
    docs = []
    for ds in (train, val):
        ids = ds.rows["input_ids"].reshape(-1)
        ids = ids[ds.rows["segment_ids"].reshape(-1) > 0]
        ends = np.flatnonzero(ids == tok.eod_id)
        docs += [tok.decode(ids[s:e]) for s, e in zip(np.concatenate([[0], ends[:-1] + 1]), ends)]
    assert sorted(docs) == sorted(TEXTS)


def test_jsonl_bad_line_reports_file_and_line_and_can_be_skipped(tmp_path, cache_dir):
    lines = [json.dumps({"text": t}) for t in TEXTS]
    lines.insert(2, '{"text": "unterminated" "oops"}')
    path = _write_jsonl(tmp_path / "bad.jsonl", lines)
    cfg = DataConfig(source="jsonl", path=str(path), num_val_documents=2, seq_length=48, vocab_size=128,
                     cache_dir=str(cache_dir))
    with pytest.raises(ValueError) as err:
        build_dataset(cfg)
    msg = str(err.value)
    assert msg.startswith(f"data.path={path}:3: not valid JSON (Expecting ',' delimiter")
    assert msg.endswith("fix the line or set data.skip_bad_lines=true") and "\n" not in msg
    ds = build_dataset(dataclasses.replace(cfg, skip_bad_lines=True))
    assert ds.packing_stats()["skipped_lines"] == 1
    assert ds.packing_stats()["num_documents"] == len(TEXTS) - 2

    for line, problem in [('["a list"]', ":1: expected a JSON object"), ('{"txt": "x"}', ':1: no "text" key'),
                          ('{"text": 5}', ':1: "text" must be a string')]:
        p = _write_jsonl(tmp_path / "one.jsonl", [line])
        with pytest.raises(ValueError, match=re.escape(problem)):
            build_dataset(dataclasses.replace(cfg, path=str(p)))


def test_jsonl_missing_file_and_user_tokenizer(tmp_path, cache_dir, small_train):
    missing = tmp_path / "nope.jsonl"
    cfg = DataConfig(source="jsonl", path=str(missing), num_val_documents=2, seq_length=48, cache_dir=str(cache_dir))
    with pytest.raises(ValueError, match=rf"^data.path={re.escape(str(missing))}: file not found.*set data.path"):
        build_dataset(cfg)
    # a given sentencepiece model is used as is: nothing is trained
    path = _write_jsonl(tmp_path / "docs.jsonl", [json.dumps({"text": "copy: a b -> a b"})] * 10)
    trained = BUILD_EVENTS["tokenizer_trained"]
    ds = build_dataset(dataclasses.replace(cfg, path=str(path), tokenizer_model=str(small_train.tokenizer.model_path)))
    assert BUILD_EVENTS["tokenizer_trained"] == trained
    assert ds.tokenizer.sha256 == small_train.tokenizer.sha256
    expected = small_train.tokenizer.encode("copy: a b -> a b") + [small_train.tokenizer.eod_id]
    assert ds.rows["input_ids"][0, : len(expected)].tolist() == expected


# --------------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(source="csv"), "source"),
        (dict(source="jsonl"), "path"),
        (dict(num_documents=0), "num_documents"),
        (dict(num_val_documents=-1), "num_val_documents"),
        (dict(tasks=("copy", "sort")), "tasks"),
        (dict(vocab_size=4), "vocab_size"),
        (dict(seq_length=1), "seq_length"),
        (dict(tokenizer_model=""), "tokenizer_model"),
    ],
)
def test_config_validate_names_field_problem_and_fix(change, field):
    with pytest.raises(ValueError) as err:
        DataConfig(**change).validate()
    msg = str(err.value)
    assert msg.startswith(f"{field}: ") and "; " in msg and "\n" not in msg


def test_default_config_is_valid():
    cfg = DataConfig()
    cfg.validate()
    assert cfg.source == "synthetic" and cfg.cache_dir == ".cache/data"
    repo_root = Path(__file__).resolve().parents[2]
    assert resolve_cache_dir(cfg.cache_dir) == repo_root / ".cache" / "data"  # under the repo, not the cwd
    assert resolve_cache_dir("/tmp/x") == Path("/tmp/x")
