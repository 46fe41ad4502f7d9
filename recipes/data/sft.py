"""Supervised fine-tuning data: conversations, the chat template, and answer-only target masks.

Chat template (the two pieces are user-defined tokens of every tokenizer we train, `CHAT_TOKENS`):

    <|user|>{user content}<|assistant|>{assistant content}<|user|>...<|assistant|>{last answer}<eod>

Nothing else is added, so the text round-trips. The loss covers each assistant content and the
token that ends it: the next `<|user|>` for an inner turn, the `<eod>` for the last one. Generation
therefore stops at `<eod>` or `<|user|>` (`stop_ids`).

Sources:
- `sft` (built-in): single-turn conversations of the synthetic pretraining tasks, split at the
  answer: "copy: c a h -> c a h" becomes user "copy: c a h ->", assistant " c a h" (the leading
  space is kept so the answer tokens are exactly the pretraining ones); "37+45=82" becomes
  "37+45=" / "82". The validation split never repeats a training prompt (and so never a training
  conversation); tasks whose whole prompt space is covered by training (brackets, at the default
  sizes) simply have few or no held-out prompts.
- `chat_jsonl`: one `{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}`
  per line; roles alternate, starting with user and ending with assistant. A seeded pick of
  `num_val_documents` conversations is held out, and training conversations whose prompt (all but
  the last answer) equals a held-out prompt are dropped.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from typing import Sequence

from recipes.data.jsonl import held_out_mask, read_jsonl_records
from recipes.data.synthetic import GENERATOR_VERSION, TASK_FNS
from recipes.data.tokenizer import ASSISTANT_TOKEN, CHAT_TOKENS, USER_TOKEN, Tokenizer

log = logging.getLogger(__name__)

# Bump when the built-in conversations change for a given seed: it is part of the rows cache key.
SFT_VERSION = 1
ROLES = ("user", "assistant")
CHAT_TASK = "chat"  # the task name of user conversations (evaluation reports per task)


@dataclass(frozen=True)
class Conversation:
    """Alternating (role, content) turns, user first, assistant last; `task` names its family."""

    messages: tuple[tuple[str, str], ...]
    task: str = CHAT_TASK

    @property
    def prompt(self) -> str:
        """The text a model is given to produce the last answer (ends with `<|assistant|>`)."""
        return render(self.messages[:-1]) + ASSISTANT_TOKEN

    @property
    def answer(self) -> str:
        return self.messages[-1][1]


def render(messages: Sequence[tuple[str, str]]) -> str:
    """The chat-template text of `messages` (no eod; the packer appends it)."""
    return "".join((USER_TOKEN if role == "user" else ASSISTANT_TOKEN) + content for role, content in messages)


def split_example(example: str) -> tuple[str, str]:
    """(prompt, answer) of one synthetic task example: the answer follows the last " ->" or the "="."""
    cut = example.rfind(" -> ")
    cut = cut + len(" ->") if cut >= 0 else example.index("=") + 1
    return example[:cut], example[cut:]


def _stream(seed: int, split: str) -> random.Random:
    digest = hashlib.sha256(f"pangu-sft/v{SFT_VERSION}/g{GENERATOR_VERSION}/{seed}/{split}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def builtin_conversations(num: int, seed: int, split: str, tasks: Sequence[str],
                          exclude_prompts: frozenset[str] | set[str] = frozenset()) -> list[Conversation]:
    """`num` single-turn task conversations from the (seed, split) stream, skipping excluded prompts.

    The validation split passes the training prompts as `exclude_prompts` and also never repeats
    one of its own prompts, so every held-out prompt is new and counted once.
    """
    rng = _stream(seed, split)
    out: list[Conversation] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < num:
        attempts += 1
        if attempts > 20 * num + 1000:
            raise ValueError(
                f"num_val_documents: only {len(out)} prompts of tasks {', '.join(sorted(set(tasks)))} are not "
                "already in the training split; lower num_val_documents or add tasks"
            )
        task = rng.choice(tasks)
        prompt, answer = split_example(TASK_FNS[task](rng))
        if prompt in exclude_prompts or (split != "train" and prompt in seen):
            continue
        seen.add(prompt)
        out.append(Conversation((("user", prompt), ("assistant", answer)), task))
    return out


def _conversation_of(obj: object) -> tuple[Conversation | None, str | None]:
    """(conversation, None) for a good chat record, (None, problem) otherwise."""
    example = 'like {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}'
    if not isinstance(obj, dict) or "messages" not in obj:
        got = f"keys: {', '.join(sorted(obj)[:5]) or 'none'}" if isinstance(obj, dict) else type(obj).__name__
        return None, f"expected an object {example} ({got})"
    messages = obj["messages"]
    if not isinstance(messages, list) or len(messages) < 2:
        return None, f"\"messages\" must be a list of at least 2 messages (user, assistant), got {messages!r:.60}"
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return None, f"messages[{i}] must be an object with string \"role\" and \"content\", got {m!r:.60}"
        role, content = m["role"], m["content"]
        expected = ROLES[i % 2]
        if role != expected:
            return None, (f"messages[{i}] has role {role!r}, expected {expected!r} "
                          "(roles alternate user, assistant, ... starting with user)")
        for token in CHAT_TOKENS:
            if token in content:
                return None, f"messages[{i}] content contains the reserved chat token {token}"
        if role == "assistant" and not content:
            return None, f"messages[{i}] is an empty assistant answer"
        turns.append((role, content))
    if turns[-1][0] != "assistant":
        return None, f"the last message must be the assistant's, got {len(turns)} messages ending with a user turn"
    return Conversation(tuple(turns)), None


def jsonl_conversations(path: str, skip_bad_lines: bool, num_val: int, seed: int) -> tuple[dict[str, list[Conversation]], int]:
    """{"train": [...], "val": [...]} of a chat JSONL file, and the number of skipped bad lines."""
    convs, skipped = read_jsonl_records(path, _conversation_of, skip_bad_lines)
    n = len(convs)
    if n == 0:
        raise ValueError(
            f"data.path={path}: no conversations; add lines {{\"messages\": [...]}} or point data.path at another file"
        )
    held_out = held_out_mask(n, num_val, seed, path, unit="conversations")
    val = [c for c, h in zip(convs, held_out) if h]
    val_prompts = {c.prompt for c in val}
    train = [c for c, h in zip(convs, held_out) if not h and c.prompt not in val_prompts]
    dropped = n - num_val - len(train)
    if dropped:
        log.info("dropped %d training conversation(s) of %s whose prompt is held out", dropped, path)
    return {"train": train, "val": val}, skipped


def check_chat_tokenizer(tokenizer: Tokenizer) -> None:
    if tokenizer.user_id is None or tokenizer.assistant_id is None:
        raise ValueError(
            f"data.tokenizer_model={tokenizer.model_path}: has no {USER_TOKEN} / {ASSISTANT_TOKEN} pieces; "
            "chat data needs them: train it with user_defined_symbols or leave data.tokenizer_model unset"
        )


def encode_conversations(tokenizer: Tokenizer, convs: Sequence[Conversation]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each rendered conversation and its target mask (len(ids) + 1: the eod too).

    A token is a target when it belongs to an assistant answer or ends one (the `<|user|>` after an
    inner answer, the eod after the last). The mask is read off the token ids, so it is exact
    whatever the tokenizer does inside the contents.
    """
    check_chat_tokenizer(tokenizer)
    all_ids = tokenizer.encode_batch([render(c.messages) for c in convs])
    masks = []
    for ids in all_ids:
        mask = [0] * (len(ids) + 1)
        in_answer = False
        for i, t in enumerate(ids):
            if t == tokenizer.assistant_id:
                in_answer = True
            elif t == tokenizer.user_id:
                mask[i] = int(in_answer)
                in_answer = False
            else:
                mask[i] = int(in_answer)
        mask[len(ids)] = int(in_answer)
        masks.append(mask)
    return all_ids, masks
