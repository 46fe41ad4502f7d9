"""Greedy packing of tokenized documents into fixed-length rows that follow the batch contract.

Shapes: N = rows, S = seq_length. Output arrays (the keys of the batch contract, `BATCH_KEYS`):

    input_ids_NS     int32    tokens; documents are `tokens + [eod]`, rows are padded with pad_id
    labels_NS        int32    next token of the same document, 0 where there is none
    loss_mask_NS     float32  1.0 exactly where labels_NS is a real target
    position_ids_NS  int32    position within the row's piece of the document, 0 at each piece start
    segment_ids_NS   int32    1..n for the pieces in a row, 0 for padding

Placement, document by document in order:
- a document that fits in the row's free space is appended;
- one that does not fit but is at most S long closes the row (its tail becomes padding) and opens a
  new one, so short documents are never cut;
- one longer than S fills the free space and continues in as many new rows as it needs.

Targets: token t predicts t+1 of its own document only. The last real token predicts eod (the model
learns to stop); eod predicts nothing; nothing is predicted across a document boundary or into
padding. When a document continues in the next row, the row's last token keeps its target (the
next row's first token), which the contract allows. A continuation piece starts at position 0 and
is its own segment: it cannot attend to the part in the previous row, so positions count what it
can see, and position_ids stay < S, the range the model is trained on.

Target masks (SFT). With `target_masks`, a target also needs its token's mask bit: mask d has one
entry per token of `docs[d] + [eod]`, and token i is predicted (from token i-1) only where it is 1.
Answer-only loss is then `mask = 1` on the assistant's answer tokens and the token that ends the
answer. Masked targets get label 0 like every other non-target. Placement is unchanged.

Two steps: `place_documents` needs only the document lengths and says where every piece goes;
`fill_rows` turns the rows asked for into the five arrays, fetching only their documents.
`pack_documents` runs both over every row (in-memory sources); the pre-tokenized stream
(`recipes.data.shards`) stores the placement and fills the rows of each batch on demand, so both
produce the same rows from the same documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

# Bump when the packed layout changes: it is part of the rows cache key.
PACKER_VERSION = 1

BATCH_KEYS: tuple[str, ...] = ("input_ids", "labels", "loss_mask", "position_ids", "segment_ids")
BATCH_DTYPES: dict[str, type] = {
    "input_ids": np.int32,
    "labels": np.int32,
    "loss_mask": np.float32,
    "position_ids": np.int32,
    "segment_ids": np.int32,
}


@dataclass(frozen=True)
class Placement:
    """Where every piece of every document goes, as flat arrays sorted by row (P = pieces).

    Row r holds pieces row_ptr[r] : row_ptr[r+1], in column order; a piece's segment id is its rank
    in the row, from 1. Document lengths count the eod. The arrays are all a row needs, so a stream
    that cannot hold its rows in memory stores these (a few int64 per piece) and fills rows on demand.
    """

    row_ptr: np.ndarray  # int64 [N+1]
    doc: np.ndarray  # int64 [P] index of the piece's document
    start: np.ndarray  # int64 [P] first token of the piece within its document
    take: np.ndarray  # int64 [P] tokens in the piece
    col: np.ndarray  # int64 [P] first column of the piece in its row

    @property
    def num_rows(self) -> int:
        return len(self.row_ptr) - 1


def place_documents(doc_lengths: Sequence[int], seq_length: int) -> Placement:
    """The placement of documents of `doc_lengths` tokens (eod included, all > 0) in rows of `seq_length`."""
    rows: list[int] = []
    docs: list[int] = []
    starts: list[int] = []
    takes: list[int] = []
    cols: list[int] = []
    row, col = 0, 0
    for d, length in enumerate(doc_lengths.tolist() if isinstance(doc_lengths, np.ndarray) else doc_lengths):
        if length > seq_length - col and length <= seq_length and col > 0:
            row, col = row + 1, 0
        start = 0
        while start < length:
            if col == seq_length:
                row, col = row + 1, 0
            take = min(seq_length - col, length - start)
            rows.append(row)
            docs.append(d)
            starts.append(start)
            takes.append(take)
            cols.append(col)
            col += take
            start += take
    num_rows = row + 1 if col > 0 else row
    row_ptr = np.searchsorted(np.asarray(rows, dtype=np.int64), np.arange(num_rows + 1), side="left")
    doc, start, take, col = (np.asarray(v, dtype=np.int64) for v in (docs, starts, takes, cols))
    return Placement(row_ptr.astype(np.int64), doc, start, take, col)


def fill_rows(
    placement: Placement,
    row_ids: Sequence[int],
    documents: Callable[[int], np.ndarray],
    seq_length: int,
    pad_id: int,
    target_masks: Callable[[int], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The five [len(row_ids), S] batch arrays of rows `row_ids` of `placement`.

    `documents(d)` is document d's tokens with its eod (int array); `target_masks(d)`, if given, its
    0/1 target mask of the same length (see the module docstring).
    """
    n = len(row_ids)
    input_ids_NS = np.full((n, seq_length), pad_id, dtype=np.int32)
    labels_NS = np.zeros((n, seq_length), dtype=np.int32)
    loss_mask_NS = np.zeros((n, seq_length), dtype=np.float32)
    position_ids_NS = np.zeros((n, seq_length), dtype=np.int32)
    segment_ids_NS = np.zeros((n, seq_length), dtype=np.int32)
    arange_S = np.arange(seq_length, dtype=np.int32)
    row_ptr = placement.row_ptr
    for i, r in enumerate(row_ids):
        lo, hi = int(row_ptr[r]), int(row_ptr[r + 1])
        pieces = zip(placement.doc[lo:hi].tolist(), placement.start[lo:hi].tolist(),
                     placement.take[lo:hi].tolist(), placement.col[lo:hi].tolist())
        for segment, (d, start, take, col) in enumerate(pieces, start=1):
            doc = documents(d)
            end = start + take
            input_ids_NS[i, col : col + take] = doc[start:end]
            position_ids_NS[i, col : col + take] = arange_S[:take]
            segment_ids_NS[i, col : col + take] = segment
            # Targets are doc[start+1 : end+1]; the document's final token (eod) has none.
            n_targets = min(take, len(doc) - 1 - start)
            targets = doc[start + 1 : start + 1 + n_targets]
            if target_masks is None:
                labels_NS[i, col : col + n_targets] = targets
                loss_mask_NS[i, col : col + n_targets] = 1.0
            else:
                keep = target_masks(d)[start + 1 : start + 1 + n_targets]
                labels_NS[i, col : col + n_targets] = np.where(keep > 0, targets, 0)
                loss_mask_NS[i, col : col + n_targets] = keep
    return {
        "input_ids": input_ids_NS,
        "labels": labels_NS,
        "loss_mask": loss_mask_NS,
        "position_ids": position_ids_NS,
        "segment_ids": segment_ids_NS,
    }


def pack_documents(
    docs: Sequence[Sequence[int]],
    seq_length: int,
    eod_id: int,
    pad_id: int,
    target_masks: Sequence[Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Pack `docs` (token ids without eod) into rows of `seq_length`; see the module docstring.

    Empty documents are skipped (an eod alone teaches nothing). `target_masks[d]` (optional,
    len(docs[d]) + 1 entries of 0/1) limits which tokens of document d are targets. Returns the
    five batch arrays, each [N, S]; N = 0 if there is nothing to pack.
    """
    masks = None
    if target_masks is not None:
        assert len(target_masks) == len(docs), (len(target_masks), len(docs))
        masks = [np.asarray(m, dtype=np.float32) for m, doc in zip(target_masks, docs) if len(doc) > 0]
        for m, doc in zip(masks, (doc for doc in docs if len(doc) > 0)):
            assert len(m) == len(doc) + 1, f"target mask has {len(m)} entries for {len(doc)} tokens + eod"
    full = [np.append(np.asarray(doc, dtype=np.int32), np.int32(eod_id)) for doc in docs if len(doc) > 0]
    placement = place_documents([len(d) for d in full], seq_length)
    return fill_rows(placement, range(placement.num_rows), full.__getitem__, seq_length, pad_id,
                     None if masks is None else masks.__getitem__)


def packing_summary(rows: dict[str, np.ndarray]) -> dict[str, float]:
    """Counts that say how well the rows are used: tokens, targets, documents per row, fill fraction."""
    segment_ids_NS = rows["segment_ids"]
    num_rows = int(segment_ids_NS.shape[0])
    slots = int(segment_ids_NS.size)
    tokens = int((segment_ids_NS > 0).sum())
    targets = float(rows["loss_mask"].sum())
    pieces = int(segment_ids_NS.max(axis=1).sum()) if num_rows else 0
    return {
        "num_rows": num_rows,
        "num_tokens": tokens,
        "num_targets": int(targets),
        "num_pieces": pieces,
        "pieces_per_row": pieces / num_rows if num_rows else 0.0,
        "non_padding_fraction": tokens / slots if slots else 0.0,
    }
