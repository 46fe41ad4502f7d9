"""TrimR: trims a redundant thinking trace, leaves a non-redundant one alone, refuses bad settings."""

import numpy as np
import pytest
from mindspore import Tensor

from pangu import trimr

V, EOD, THINK, END, SEP, CHECK, GIVE_UP = 32, 3, 5, 6, 7, 8, 9

# thoughts end with SEP; a thought "reaches" the digit token (10..19) before its SEP, GIVE_UP: abandoned
REDUNDANT = [20, 21, 15, SEP] + [CHECK, 15, SEP] * 4 + [END, 15]
DIFFERENT = [20, GIVE_UP, SEP, 21, 14, SEP, 22, GIVE_UP, SEP, 23, 15, SEP, END, 15]


class ScriptedLM:
    """Writes its row's script after the prompt; once an END is in the row it writes the answer (the
    script's last token) and then EOD, whatever came before: a model that answers when its thinking is
    closed."""

    def __init__(self, prompts, scripts):
        self.lengths, self.scripts = [len(p) for p in prompts], scripts

    def __call__(self, ids, pos, seg):
        ids, seg = ids.asnumpy(), seg.asnumpy()
        b, t = ids.shape
        logits = np.zeros((b, t, V), np.float32)
        for r in range(b):
            n, script = self.lengths[r], self.scripts[r]
            for c in range(n - 1, t):
                written = list(ids[r, n : c + 1]) if c >= n else []
                if END in written:
                    after = len(written) - 1 - written.index(END)
                    nxt = script[-1] if after == 0 else EOD
                else:
                    nxt = script[len(written)] if len(written) < len(script) else EOD
                logits[r, c, nxt] = 10.0
        return Tensor(logits)


class LastDigitVerifier:
    """The answer the thoughts so far reach: the digit token of the last thought, () if it has none."""

    def __init__(self):
        self.batches = []

    def answers(self, questions, thoughts):
        self.batches.append(len(questions))
        return [tuple(t for t in th[-1] if 10 <= t < 20)[-1:] for th in thoughts]


CFG = trimr.TrimRConfig(think_start=(THINK,), think_end=(END,), boundary_ids=frozenset({SEP}), repeats=2)
PROMPTS = [[1, 2, THINK], [1, 4, 4, THINK]]


def run(verifier, scripts=(REDUNDANT, DIFFERENT), overlap=False, cfg=CFG):
    return trimr.generate(ScriptedLM(PROMPTS, list(scripts)), PROMPTS, 40, cfg, verifier, stop_ids=[EOD],
                          overlap=overlap)


def test_trims_the_redundant_trace_and_not_the_non_redundant_one():
    verifier = LastDigitVerifier()
    new, states = run(verifier)
    plain, plain_states = run(None)
    assert plain == [REDUNDANT, DIFFERENT]
    # redundant: the second thought repeats the answer 15 of the first: closed there, then answered
    assert new[0] == [20, 21, 15, SEP, CHECK, 15, SEP, END, 15]
    assert states[0].trimmed == "settled" and states[0].answers == [(15,), (15,)]
    assert states[0].think_tokens == 8 and plain_states[0].think_tokens == len(REDUNDANT) - 1
    # non-redundant: answers (), 14, (), 15 never repeat: untouched
    assert new[1] == DIFFERENT and states[1].trimmed is None
    assert states[1].answers == [(), (14,), (), (15,)]
    assert verifier.batches[:2] == [1, 1] and sum(verifier.batches) == 2 + 4  # rows checked together


def test_abandoned_attempts_do_not_count_as_a_settled_answer():
    assert not trimr.settled([(), ()], 2) and not trimr.settled([(14,), (15,)], 2)
    assert trimr.settled([(), (15,), (15,)], 2) and not trimr.settled([(15,), (15,)], 3)


def test_max_thoughts_closes_a_wandering_trace():
    cfg = trimr.TrimRConfig((THINK,), (END,), frozenset({SEP}), max_thoughts=2)
    new, states = run(None, cfg=cfg)
    assert new[1] == [20, GIVE_UP, SEP, 21, 14, SEP, END, 15] and states[1].trimmed == "max_thoughts"


def test_overlapped_verifier_still_trims_with_the_same_answer():
    new, states = run(LastDigitVerifier(), overlap=True)
    assert states[0].trimmed == "settled" and new[0][-2:] == [END, 15]
    assert len(new[0]) < len(REDUNDANT) and new[1] == DIFFERENT


def test_model_verifier_prompt_closes_the_thinking():
    v = trimr.ModelVerifier(None, think_end=[END], max_answer_tokens=2, answer_prefix=[11])
    assert v.prompt([1, THINK], [[20, SEP], [21, SEP]]) == [1, THINK, 20, SEP, 21, SEP, END, 11]


@pytest.mark.parametrize("kwargs, message", [
    (dict(think_start=(THINK,), think_end=(), boundary_ids=frozenset({SEP})), "think_end"),
    (dict(think_start=(THINK,), think_end=(END,), boundary_ids=frozenset()), "boundary_ids"),
    (dict(think_start=(THINK,), think_end=(END,), boundary_ids=frozenset({SEP}), repeats=1), "repeats"),
])
def test_bad_settings_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match="^[^\n]*$") as err:
        trimr.TrimRConfig(**kwargs)
    assert message in str(err.value)
