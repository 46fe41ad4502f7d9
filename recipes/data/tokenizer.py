"""A deterministic sentencepiece BPE tokenizer: training, the on-disk cache, and a small wrapper.

Fixed ids: pad=0, unk=1, bos=2, eod=3 (sentencepiece's eos piece is our end-of-document `<eod>`),
then the chat-template tokens `<|user|>`=4 and `<|assistant|>`=5 (`CHAT_TOKENS`). They are
user-defined pieces: always one token, never merged with neighbours, and every tokenizer we train
has them, so a pretraining checkpoint and its SFT stage share one vocabulary.
Training is made reproducible by feeding sentences in a fixed order with one thread and no sampling
or shuffling; two trainings on the same text give byte-identical model files (tested).

Normalisation is the identity and whitespace is kept as is, so `decode(encode(s)) == s` for any text
made of characters in the vocabulary (newlines included). Digits are always single pieces
(`split_digits`), which keeps arithmetic learnable. `hard_vocab_limit=False` makes `vocab_size` an
upper bound: a low-diversity corpus (the synthetic one) simply gets a smaller vocabulary instead of
a training error; `Tokenizer.vocab_size` is always the real size.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm

# Bump when the training parameters change: it is part of the tokenizer cache key.
TRAINER_VERSION = 2

PAD_ID, UNK_ID, BOS_ID, EOD_ID = 0, 1, 2, 3
USER_TOKEN, ASSISTANT_TOKEN = "<|user|>", "<|assistant|>"
CHAT_TOKENS: tuple[str, ...] = (USER_TOKEN, ASSISTANT_TOKEN)
_CHUNK_CHARS = 4096  # long documents are fed to the trainer in chunks of this many characters
_MAX_SENTENCE_BYTES = 4 * _CHUNK_CHARS  # UTF-8 is at most 4 bytes per character
_MAX_TRAIN_SENTENCES = 200_000  # larger inputs are subsampled (seeded) to keep training to seconds


class Tokenizer:
    """A loaded sentencepiece model with the ids the packer and trainer need."""

    def __init__(self, model_path: str | os.PathLike) -> None:
        self.model_path = Path(model_path)
        proto = self.model_path.read_bytes()
        self.sha256 = hashlib.sha256(proto).hexdigest()
        self._sp = spm.SentencePieceProcessor(model_proto=proto)
        if self._sp.eos_id() < 0:
            raise ValueError(
                f"data.tokenizer_model={model_path}: the model has no eos piece to use as end-of-document; "
                "train it with eos_id set, or leave data.tokenizer_model unset to train one"
            )
        self.vocab_size: int = self._sp.get_piece_size()
        self.eod_id: int = self._sp.eos_id()
        self.bos_id: int = self._sp.bos_id()
        self.unk_id: int = self._sp.unk_id()
        # A user model may have no pad piece; padding is masked out of attention and loss, so id 0
        # is safe to reuse even if it means something else there.
        self.pad_id: int = self._sp.pad_id() if self._sp.pad_id() >= 0 else 0
        # Chat-template ids, None when the model lacks the piece (a user model trained elsewhere).
        self.user_id: int | None = self._piece_id(USER_TOKEN)
        self.assistant_id: int | None = self._piece_id(ASSISTANT_TOKEN)

    def _piece_id(self, piece: str) -> int | None:
        i = self._sp.piece_to_id(piece)
        return i if i != self.unk_id and self._sp.id_to_piece(i) == piece else None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no bos/eod added; the packer appends eod)."""
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` of each text, in one call (single-threaded: the machine is shared)."""
        return self._sp.encode(list(texts), out_type=int, num_threads=1)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; control pieces (pad, bos, eod) decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))


class JsonTokenizer:
    """A Hugging Face `tokenizer.json` (the `tokenizers` library: byte-level BPE of Qwen2 / Qwen2.5, or MindVL's
    byte tokenizer) with the same attributes as `Tokenizer`, so text runs can train with a checkpoint's own
    tokenizer (`data.tokenizer_model: path/tokenizer.json`). Special ids by piece: end of document `<eod>` or
    `<|endoftext|>` (required), pad `<pad>` (else the end-of-document id: padding is masked), bos `<bos>`,
    unk `<unk>` (else -1), the chat tokens `<|user|>` / `<|assistant|>` (else None)."""

    def __init__(self, path: str | os.PathLike) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.model_path = Path(path)
        raw = self.model_path.read_bytes()
        self.sha256 = hashlib.sha256(raw).hexdigest()
        try:
            self._tk = HFTokenizer.from_str(raw.decode("utf-8"))
        except Exception as err:   # the library raises its own exception type for a malformed file
            raise ValueError(f"data.tokenizer_model={path}: not a tokenizer.json the tokenizers library reads "
                             f"({str(err)[:80]}); give the checkpoint's own file") from None
        self._tk.no_padding()
        self._tk.no_truncation()
        self.vocab_size: int = self._tk.get_vocab_size(with_added_tokens=True)
        eod = self._first("<eod>", "<|endoftext|>")
        if eod is None:
            raise ValueError(f"data.tokenizer_model={path}: no <eod> or <|endoftext|> token to end documents; "
                             "use a tokenizer that has one")
        self.eod_id: int = eod
        self.pad_id: int = self._first("<pad>") if self._first("<pad>") is not None else eod
        self.bos_id: int = self._first("<bos>") if self._first("<bos>") is not None else -1
        self.unk_id: int = self._first("<unk>") if self._first("<unk>") is not None else -1
        self.user_id: int | None = self._first(USER_TOKEN)
        self.assistant_id: int | None = self._first(ASSISTANT_TOKEN)

    def _first(self, *pieces: str) -> int | None:
        for piece in pieces:
            found = self._tk.token_to_id(piece)
            if found is not None:
                return found
        return None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens added; the packer appends eod)."""
        return self._tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tk.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special tokens (pad, eod) decode to nothing, as sentencepiece's control pieces."""
        return self._tk.decode([int(i) for i in ids], skip_special_tokens=True)

    def id_to_piece(self, token_id: int) -> str:
        return self._tk.id_to_token(int(token_id))


def open_tokenizer(path: str | os.PathLike):
    """`data.tokenizer_model`: a sentencepiece .model (Tokenizer) or a Hugging Face tokenizer.json (JsonTokenizer)."""
    return JsonTokenizer(path) if str(path).endswith(".json") else Tokenizer(path)


def _training_sentences(texts: Sequence[str], seed: int) -> list[str]:
    """Documents cut into chunks the trainer accepts, subsampled with `seed` if there are too many."""
    chunks = [t[i : i + _CHUNK_CHARS] for t in texts for i in range(0, len(t), _CHUNK_CHARS)]
    if len(chunks) > _MAX_TRAIN_SENTENCES:
        keep = sorted(random.Random(seed).sample(range(len(chunks)), _MAX_TRAIN_SENTENCES))
        chunks = [chunks[i] for i in keep]
    return chunks


def train_tokenizer(
    texts: Sequence[str], vocab_size: int, out_path: str | os.PathLike, character_coverage: float = 1.0, seed: int = 0
) -> Tokenizer:
    """Train a BPE model on `texts` and write it atomically to `out_path` (temp file, then rename).

    `character_coverage` < 1 lets rare characters of large user corpora map to `<unk>` instead of
    taking vocabulary slots; the synthetic corpus uses 1.0.
    """
    out_path = Path(out_path)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_training_sentences(texts, seed)),
            model_writer=buf,
            model_type="bpe",
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            character_coverage=character_coverage,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOD_ID,
            pad_piece="<pad>", unk_piece="<unk>", bos_piece="<bos>", eos_piece="<eod>",
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            user_defined_symbols=list(CHAT_TOKENS),
            max_sentence_length=_MAX_SENTENCE_BYTES,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as err:
        msg = str(err).splitlines()[-1] if str(err) else type(err).__name__
        raise ValueError(
            f"vocab_size: sentencepiece training failed with vocab_size={vocab_size} ({msg}); "
            "raise data.vocab_size or give a trained model as data.tokenizer_model"
        ) from None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, out_path)
    return Tokenizer(out_path)
