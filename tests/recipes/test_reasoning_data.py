"""The thinking-trace reasoning corpus: correct answers, redundancy where TrimR expects it, trainable as chat data."""

from __future__ import annotations

import numpy as np

from recipes.data.reasoning import THINK_END, THINK_START, thinking_example, write_reasoning_corpus


def test_traces_reach_the_answer_then_re_verify_it():
    examples = [thinking_example(0, i) for i in range(200)]
    assert examples[3] == thinking_example(0, 3) != thinking_example(1, 3)
    abandoned = 0
    for ex in examples:
        nums = [int(n) for n in ex.question[:-2].split("+")]
        assert ex.answer == str(sum(nums)) and ex.thoughts[ex.solved_at - 1] == f"so {ex.answer}"
        after = ex.thoughts[ex.solved_at :]
        assert after and after[-1] == f"so {ex.answer}" and all(t.startswith(("check ", "so ")) for t in after)
        assert ex.response.startswith(THINK_START) and ex.response.endswith(f"{THINK_END} {ex.answer}")
        abandoned += ex.thoughts[0].startswith("try ")
    assert 60 < abandoned < 140  # about half open with an unfinished attempt
    redundant = sum(len(ex.thoughts) - ex.solved_at for ex in examples) / sum(len(ex.thoughts) for ex in examples)
    assert 0.4 < redundant < 0.8  # share of thoughts after the answer is settled


def test_the_corpus_trains_as_chat_data_with_markers_trimr_can_use(tmp_path):
    from recipes.data import DataConfig, build_dataset
    from recipes.generate import marker_ids

    path = tmp_path / "reasoning.jsonl"
    assert write_reasoning_corpus(str(path), 300, seed=0) == 300
    cfg = DataConfig(source="chat_jsonl", path=str(path), num_val_documents=20, seq_length=256,
                     cache_dir=str(tmp_path / "cache"))
    ds = build_dataset(cfg, "train")
    tok = ds.tokenizer
    start, end = marker_ids(tok, THINK_START, "--think-start"), marker_ids(tok, " " + THINK_END, "--think-end")
    text = tok.encode("<|user|>1+2=?<|assistant|>" + thinking_example(0, 0).response)
    assert any(text[i : i + len(start)] == start for i in range(len(text)))
    assert any(text[i : i + len(end)] == end for i in range(len(text)))
    assert len(marker_ids(tok, " ;", "--thought-boundary", one_token=True)) == 1
    rows = ds.rows
    assert rows["input_ids"].shape[1] == 256 and np.asarray(rows["loss_mask"]).sum() > 0
    masked = np.asarray(rows["loss_mask"]).mean()
    assert 0.3 < masked < 0.95  # answer-only loss: the thinking and answer, not the question
