"""SFT data: chat template, answer-only target masks through the packer, held-out prompts, chat JSONL."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from recipes.data import DataConfig, build_conversations, build_dataset, encode_conversations, pack_documents
from recipes.data.sft import Conversation, render, split_example
from recipes.data.synthetic import TASKS

SMALL = dict(source="sft", num_documents=600, num_val_documents=60, seq_length=48, vocab_size=256)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> DataConfig:
    return DataConfig(cache_dir=str(tmp_path_factory.mktemp("sft_cache")), **SMALL)


@pytest.fixture(scope="module")
def train(cfg):
    return build_dataset(cfg, "train")


def test_split_example_keeps_pretraining_answer_text():
    assert split_example("copy: c a h -> c a h") == ("copy: c a h ->", " c a h")
    assert split_example("a=3 f=9 ? f -> 9") == ("a=3 f=9 ? f ->", " 9")
    assert split_example("37+45=82") == ("37+45=", "82")
    conv = Conversation((("user", "37+45="), ("assistant", "82")), "arith")
    assert conv.prompt == "<|user|>37+45=<|assistant|>" and render(conv.messages) == conv.prompt + "82"


def test_packer_target_masks_on_hand_made_documents():
    # doc A: 4 prompt tokens, answer 12 13 (+eod); doc B is split across rows
    docs = [[10, 11, 5, 12, 13], [20, 5, 21, 22, 23, 24, 25]]
    masks = [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1]]
    rows = pack_documents(docs, seq_length=8, eod_id=3, pad_id=0, target_masks=masks)
    np.testing.assert_array_equal(rows["input_ids"], [[10, 11, 5, 12, 13, 3, 0, 0], [20, 5, 21, 22, 23, 24, 25, 3]])
    np.testing.assert_array_equal(rows["loss_mask"], [[0, 0, 1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(rows["labels"], [[0, 0, 12, 13, 3, 0, 0, 0], [0, 21, 22, 23, 24, 25, 3, 0]])
    plain = pack_documents(docs, seq_length=8, eod_id=3, pad_id=0)
    for key in ("input_ids", "position_ids", "segment_ids"):  # placement is unchanged by masks
        np.testing.assert_array_equal(rows[key], plain[key])


def test_multi_turn_mask_covers_each_answer_and_its_end(train):
    tok = train.tokenizer
    conv = Conversation((("user", "copy: a b ->"), ("assistant", " a b"), ("user", "reverse: a b ->"),
                         ("assistant", " b a")))
    (ids,), (mask,) = encode_conversations(tok, [conv])
    targets = [t for t, m in zip(ids + [tok.eod_id], mask) if m]
    assert targets == tok.encode(" a b")[-2:] + [tok.user_id] + tok.encode(" b a")[-2:] + [tok.eod_id]
    assert tok.user_id == 4 and tok.assistant_id == 5 and ids.count(tok.user_id) == 2


def _targets_per_segment(ds) -> list[list[int]]:
    r, out = ds.rows, []
    for row in range(ds.num_rows):
        seg = r["segment_ids"][row]
        for s in range(1, seg.max() + 1):
            out.append(r["labels"][row][(seg == s) & (r["loss_mask"][row] == 1)].tolist())
    return out


def test_loss_mask_covers_exactly_the_answers(cfg, train):
    tok = train.tokenizer
    convs = build_conversations(cfg, "train")
    assert len(convs) == SMALL["num_documents"] and {c.task for c in convs} == set(TASKS)
    r = train.rows
    answers = _targets_per_segment(train)
    assert len(answers) == len(convs)  # conversations are short: one segment each, in order
    for conv, got in zip(convs, answers):
        assert got[-1] == tok.eod_id and tok.decode(got[:-1]) == conv.answer.strip()
        prompt_ids = tok.encode(conv.prompt)
        assert tok.encode(render(conv.messages))[: len(prompt_ids)] == prompt_ids  # prompt is a token prefix
    assert (r["labels"][r["loss_mask"] == 0] == 0).all()
    assert train.packing_stats()["num_documents"] == len(convs)
    assert r["position_ids"][r["segment_ids"] > 0].max() < SMALL["seq_length"]


def test_held_out_prompts_never_appear_in_training(cfg, train):
    train_prompts = {c.prompt for c in build_conversations(cfg, "train")}
    val = build_conversations(cfg, "val")
    assert len(val) == SMALL["num_val_documents"]
    assert not {c.prompt for c in val} & train_prompts
    assert len({c.prompt for c in val}) == len(val)
    assert build_dataset(cfg, "val").packing_stats()["num_documents"] == len(val)


def test_sft_shares_the_pretraining_tokenizer(cfg, train):
    pre = build_dataset(DataConfig(cache_dir=cfg.cache_dir, num_documents=50, num_val_documents=5, seq_length=48,
                                   seed=99, tasks=("copy",)), "train")
    assert pre.tokenizer.sha256 == train.tokenizer.sha256  # whatever the sizes, seeds and task mixes


def _write(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def _chat(u, a):
    return {"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}


def test_chat_jsonl_packs_and_holds_out(tmp_path, cfg):
    records = [_chat(f"say {i}", f" word {i % 7}") for i in range(30)] + [_chat("say 3", " again")]
    path = _write(tmp_path / "chat.jsonl", records)
    chat = dataclasses.replace(cfg, source="chat_jsonl", path=str(path), num_val_documents=5, vocab_size=64)
    train_ds, val = build_dataset(chat, "train"), build_conversations(chat, "val")
    train_convs = build_conversations(chat, "train")
    assert not {c.prompt for c in val} & {c.prompt for c in train_convs}
    assert len(train_convs) + len(val) in (30, 31)  # a duplicate of a held-out prompt is dropped
    assert train_ds.tokenizer.user_id == 4
    tok = train_ds.tokenizer
    got = _targets_per_segment(train_ds)
    assert [tok.decode(t[:-1]) for t in got] == [c.answer.strip() for c in train_convs]
    assert all(t[-1] == tok.eod_id for t in got)


@pytest.mark.parametrize("line, problem", [
    ('{"messages": [{"role": "user", "content": "hi"} {"role"', "not valid JSON"),
    (json.dumps({"text": "x"}), 'expected an object like {"messages"'),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "at least 2 messages"),
    (json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}),
     "messages[0] has role 'assistant', expected 'user'"),
    (json.dumps({"messages": [{"role": "user", "content": 1}, {"role": "assistant", "content": "b"}]}),
     'messages[0] must be an object with string "role" and "content"'),
    (json.dumps(_chat("a <|assistant|> b", "c")), "reserved chat token <|assistant|>"),
    (json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                              {"role": "user", "content": "c"}]}), "last message must be the assistant's"),
])
def test_chat_jsonl_bad_line_names_file_and_line(tmp_path, cfg, line, problem):
    path = _write(tmp_path / "bad.jsonl", [_chat("a", "b"), "", line, _chat("c", "d")])
    chat = dataclasses.replace(cfg, source="chat_jsonl", path=str(path), num_val_documents=1)
    with pytest.raises(ValueError) as err:
        build_dataset(chat, "train")
    msg = str(err.value)
    assert msg.startswith(f"data.path={path}:3: ") and problem in msg and "\n" not in msg
    assert msg.endswith("fix the line or set data.skip_bad_lines=true")
    assert len(build_conversations(dataclasses.replace(chat, skip_bad_lines=True), "train")) == 1


def test_config_errors_for_chat_sources():
    with pytest.raises(ValueError, match=r"^path: required when source='chat_jsonl'"):
        DataConfig(source="chat_jsonl").validate()
    with pytest.raises(ValueError, match=re.escape("source: 'chat' is not a known source; use one of synthetic, jsonl, sft, chat_jsonl")):
        DataConfig(source="chat").validate()
    with pytest.raises(ValueError, match="has no conversations"):
        build_conversations(DataConfig(), "val")
