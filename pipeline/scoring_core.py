"""Stage two's scoring core: Arrow batches of pairs in, Arrow batches of scores out.

Engine-agnostic on purpose: plain pyarrow, numpy and torch, no Beam. ``pipeline/beam/score.py`` wraps
it in Beam transforms; another engine (Spark's ``mapInArrow``, Ray Data's ``map_batches``) can
wrap the same functions. ``encoders/inference.py`` (and so ``jobs/evaluate``) runs the head
through the same ``encoders.device.run_head``, so there is one inference path.

The path of one batch of P pairs, every step columnar (Python objects only for the rare bad rows):

1. :func:`~pipeline.pair_checks.table_from_rows` (text formats only): parsed rows -> an Arrow
   table, kept columns typed as :func:`pipeline.pairs.kept_fields` decided before the run.
2. :func:`~pipeline.pair_checks.validate_pairs`: a reason code per row with ``pyarrow.compute``
   masks, the reasons of the pair contract (``pipeline/pairs.py``: ``left_null_text``,
   ``right_empty_text``, ``left_non_string_id`` ...; ``kept_column_type`` for a kept value that
   does not fit its decided type); only bad rows become :class:`DeadLetter`.
3. :func:`~pipeline.pair_checks.prepare_pairs`: the two id columns (given, or the content hash of
   each *unique* text).
4. :class:`StoreLookup`: ids -> store rows by binary search over fixed-width id keys (bytes and
   length, so distinct ids never meet), gathers
   with numpy ``take``.
5. :class:`pipeline.head_feed.HeadScorer`: gathers the rows (on the device when the stores are
   resident there) and runs the student's head over them, in batches.
6. :func:`score_table`: ids, ``score``, ``probs`` and kept columns as one Arrow table.

Steps 1-3 live in ``pipeline/pair_checks.py`` (the one pair validator, which the teacher jobs use
too); this module holds 4-6 and is the engines' entrance to all six (the names of 1-3 are
importable from here). :func:`prepare_pairs` runs 1-3 and :func:`score_pairs` 4-6;
:func:`score_batch` runs all of them.

Shapes: P pairs in a batch, R rows of a store, N/M tokens kept per side, D token size,
H pooled size, C head outputs.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dead_letters import REASON_TEXT_MISSING, DeadLetter
from pipeline.head_feed import HeadScorer, head_option_refused
from pipeline.pair_checks import (FILE_COLUMN, POSITION_COLUMN, PreparedPairs, prepare_pairs, table_from_rows,
                                  validate_pairs)
from pipeline.pairs import PairColumns
from pipeline.store_codec import SideArrays, side_arrays

# What the engines (pipeline/beam, pipeline/spark) take from the core: steps 1-3 are re-exported.
__all__ = ["FILE_COLUMN", "POSITION_COLUMN", "FoundPairs", "HeadScorer", "PairColumns", "PreparedPairs", "StoreLookup",
           "head_option_refused", "find_pairs", "id_hashes", "missing_letters", "partition", "prepare_pairs", "score_batch",
           "score_pairs", "score_table", "store_columns", "table_from_rows", "validate_pairs"]

# Store ids longer than this are looked up through a dict instead of fixed-width keys.
_MAX_KEY_BYTES = 512


# --------------------------------------------------------------------------- stores


def _fixed_width_keys(ids: pa.Array, width: int | None = None,
                      with_length: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(P,) strings -> ((P,) numpy ``S{width}`` keys, (P,) bool: longer than ``width``).

    Built from Arrow's offsets and bytes with numpy, no Python string per row. Keys compare
    bytewise (so binary search works). The bytes alone are zero-padded, so ``"L0"`` and
    ``"L0\\x00"`` would get the same key; ``with_length`` appends each id's byte length (2 bytes,
    big-endian; ids here are at most ``_MAX_KEY_BYTES``), which makes the key injective: two
    keys are equal only for the same bytes of the same length. (numpy's ``S`` comparisons ignore
    trailing NULs, which is harmless once every key has the same width and carries its length.)
    """
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    ids = ids.cast(pa.string())
    count = len(ids)
    offsets = np.frombuffer(ids.buffers()[1], np.int32)[ids.offset:ids.offset + count + 1]
    data = np.frombuffer(ids.buffers()[2], np.uint8) if ids.buffers()[2] is not None else np.zeros(1, np.uint8)
    lengths = np.diff(offsets)
    if width is None:
        width = max(1, int(lengths.max()) if count else 1)
    too_long = lengths > width
    span = np.arange(width)
    inside = span[None, :] < np.minimum(lengths, width)[:, None]
    suffix = 2 if with_length else 0
    keys = np.zeros((count, width + suffix), np.uint8)
    if count and len(data):
        keys[:, :width][inside] = data[np.minimum(offsets[:-1, None] + span[None, :], len(data) - 1)[inside]]
    if with_length:
        clipped = np.minimum(lengths, 0xFFFF)
        keys[:, width] = clipped >> 8
        keys[:, width + 1] = clipped & 0xFF
    return keys.view(f"S{width + suffix}").reshape(count), too_long


def store_columns(layout) -> list[str]:
    """The store columns scoring needs (not ``id`` nor ``text_hash``)."""
    names = ["tokens", "num_tokens"]
    if layout.dtype == "int8":
        names.append("token_scale")
    if layout.pooled_dim:
        names.append("pooled")
    return names


class StoreLookup:
    """A store held in memory: ids -> rows by binary search, rows -> SideArrays by ``take``.

    Ids are kept sorted as fixed-width keys (R,) (the id's bytes, zero-padded, then its length:
    distinct ids have distinct keys) with the store row of each; a batch of
    P ids is found with one ``numpy.searchsorted`` (P log R byte comparisons in C), not P dict
    lookups. Tokens stay in the stored dtype (half the memory of float32); only gathered rows
    are converted, by the head. When an id is stored twice the later row wins (newly encoded
    rows come after reused ones and replace them).
    """

    def __init__(self, tables: Sequence[pa.Table], layout):
        self.layout = layout
        table = (pa.concat_tables([t.select(["id", *store_columns(layout)]) for t in tables]) if tables else
                 layout.schema().empty_table().select(["id", *store_columns(layout)]))
        self.table = table.drop_columns(["id"])   # the store columns, for joins that carry rows on
        # Every column stays in its stored dtype (pooled float16, as the tokens): a batch gathers
        # half the bytes of float32 and converts them where the head runs (pipeline/head_feed.py);
        # measured faster on CPU than gathering rows converted once up front.
        self.arrays = side_arrays(table, layout)
        ids = table.column("id").combine_chunks()
        self._dict = None
        if len(ids) and pc.max(pc.binary_length(ids)).as_py() > _MAX_KEY_BYTES:
            # Very long ids: fixed-width keys would be mostly padding.
            self._dict = {i: r for r, i in enumerate(ids.to_pylist())}
            return
        # Keys carry each id's length: ids that differ only in trailing NUL bytes stay apart.
        lengths = pc.binary_length(ids).to_numpy(zero_copy_only=False) if len(ids) else np.zeros(0, np.int64)
        self._width = max(1, int(lengths.max()) if len(ids) else 1)
        keys, _ = _fixed_width_keys(ids, self._width, with_length=True)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        last = np.ones(len(keys), bool)
        last[:-1] = keys[1:] != keys[:-1]
        self._keys, self._rows = keys[last], order[last]

    def __len__(self) -> int:
        return len(self._dict) if self._dict is not None else len(self._keys)

    def rows(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """(P,) ids -> (P,) int64 store rows, -1 where the store has no such id.

        Each distinct id of the batch is looked up once (pairs repeat their ids: a query meets
        many candidates), after one hash pass (``dictionary_encode``) over the P ids."""
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        if len(ids) > 1:
            encoded = pc.dictionary_encode(ids)
            if len(encoded.dictionary) < len(ids):
                return self._unique_rows(encoded.dictionary)[encoded.indices.to_numpy(zero_copy_only=False)]
        return self._unique_rows(ids)

    def _unique_rows(self, ids: pa.Array) -> np.ndarray:
        """(U,) ids -> (U,) int64 store rows, -1 where the store has no such id."""
        if self._dict is not None:
            get = self._dict.get
            values = ids.to_pylist()
            return np.fromiter((get(i, -1) for i in values), np.int64, len(values))
        if not len(self._keys):
            return np.full(len(ids), -1, np.int64)
        keys, too_long = _fixed_width_keys(ids, self._width, with_length=True)
        at = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        found = (self._keys[at] == keys) & ~too_long
        return np.where(found, self._rows[at], -1).astype(np.int64)

    def gather(self, rows: np.ndarray, tokens: bool = True) -> SideArrays:
        """(B,) valid rows -> SideArrays of those rows (numpy take); ``tokens=False``: without tokens."""
        return self.arrays.take(rows, tokens)


# --------------------------------------------------------------------------- partitions

_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def id_hashes(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(P,) strings -> (P,) uint64 FNV-1a of their UTF-8 bytes: the same on every worker and in
    every process (Python's ``hash`` is not), vectorised over byte positions."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    lengths = pc.binary_length(ids).to_numpy(zero_copy_only=False) if len(ids) else np.zeros(0, np.int64)
    if len(ids) and lengths.max() > _MAX_KEY_BYTES:
        import hashlib
        return np.fromiter((int.from_bytes(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest(), "little")
                            for i in ids.to_pylist()), np.uint64, len(ids))
    keys, _ = _fixed_width_keys(ids)
    width = keys.dtype.itemsize
    matrix = keys.view(np.uint8).reshape(len(ids), width)
    hashes = np.full(len(ids), _FNV_OFFSET, np.uint64)
    with np.errstate(over="ignore"):
        for column in range(width):
            live = lengths > column
            hashes[live] = (hashes[live] ^ matrix[live, column].astype(np.uint64)) * _FNV_PRIME
    return hashes


def partition(table: pa.Table, hashes: np.ndarray, buckets: int):
    """Split a table by ``hashes % buckets`` -> (bucket, rows of that bucket) per non-empty bucket."""
    bucket = (hashes % np.uint64(buckets)).astype(np.int64)
    order = np.argsort(bucket, kind="stable")
    ordered = bucket[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(order) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(order)]
    for start, end in zip(starts, ends):
        yield int(ordered[start]), table.take(pa.array(order[start:end]))


# --------------------------------------------------------------------------- scoring

def score_table(pairs: pa.Table, scores: np.ndarray, probs: np.ndarray | None, schema: pa.Schema) -> pa.Table:
    """Prepared pairs (B rows) + their scores -> the output table in ``schema``."""
    data = {"left_id": pairs.column("left_id"), "right_id": pairs.column("right_id"), "score": pa.array(scores)}
    if "probs" in schema.names:
        classes = probs.shape[1]
        offsets = pa.array(np.arange(0, probs.size + 1, classes, dtype=np.int32))
        data["probs"] = pa.ListArray.from_arrays(offsets, pa.array(probs.reshape(-1)))
    for field in schema:
        if field.name not in data:
            data[field.name] = pairs.column(field.name)
    return pa.table([data[f.name] for f in schema], schema=schema)


def missing_letters(pairs: pa.Table, rows: np.ndarray, side: str, columns: PairColumns,
                    paths: Sequence[str]) -> list[DeadLetter]:
    """Dead letters (``left_text_missing`` ...) for prepared pairs whose id is not in a store.

    The row holds what the pair carries: its two ids (under the input's id columns in id mode)
    and its kept columns; the whole input row is not carried past reading.
    """
    names = ({"left_id": columns.left_id, "right_id": columns.right_id} if columns.id_mode
             else {"left_id": "left_id", "right_id": "right_id"})
    carried = [n for n in pairs.column_names if not n.startswith(("_left_", "_right_"))]
    picked = pairs.select(carried).take(pa.array(rows)).to_pylist()
    letters = []
    for row in picked:
        id_ = row[f"{side}_id"]
        fields = {names.get(k, k): v for k, v in row.items() if k not in (FILE_COLUMN, POSITION_COLUMN)}
        letters.append(DeadLetter(
            f"{side}_{REASON_TEXT_MISSING}",
            f"{side} id {id_!r} has no encoded text (absent from the text table, or its text was dead-lettered)",
            f"{paths[row[FILE_COLUMN]]}:{row[POSITION_COLUMN]}", fields))
    return letters


class FoundPairs(NamedTuple):
    """Prepared pairs looked up in both stores: ``pairs`` (B rows) whose two ids are stored,
    ``left_rows`` / ``right_rows`` (B,) int64 their store rows, and ``dead_letters`` of the pairs
    whose left or right id is not stored."""
    pairs: pa.Table
    left_rows: np.ndarray
    right_rows: np.ndarray
    dead_letters: list[DeadLetter]


def find_pairs(pairs: pa.Table, left: StoreLookup, right: StoreLookup, columns: PairColumns,
               paths: Sequence[str]) -> FoundPairs:
    """Prepared pairs (P rows) + both stores -> :class:`FoundPairs` (step 4)."""
    left_rows = left.rows(pairs.column("left_id"))
    right_rows = right.rows(pairs.column("right_id"))
    found = (left_rows >= 0) & (right_rows >= 0)
    letters = (missing_letters(pairs, np.flatnonzero(left_rows < 0), "left", columns, paths)
               + missing_letters(pairs, np.flatnonzero((left_rows >= 0) & (right_rows < 0)), "right", columns, paths))
    keep = np.flatnonzero(found)
    if letters:
        pairs = pairs.take(pa.array(keep))
    return FoundPairs(pairs, left_rows[keep], right_rows[keep], letters)


def score_pairs(pairs: pa.Table, left: StoreLookup, right: StoreLookup, scorer: HeadScorer, schema: pa.Schema,
                columns: PairColumns, paths: Sequence[str]) -> tuple[pa.Table, list[DeadLetter]]:
    """Prepared pairs (P rows) + both stores -> (scores table of the pairs found, dead letters
    of the pairs whose left or right id is not stored)."""
    found = find_pairs(pairs, left, right, columns, paths)
    # The scorer gathers the rows itself: on the device where the stores are resident, else
    # straight into its reusable host buffers (pipeline/head_feed.py).
    scores, probs = scorer.score_rows(left.arrays, found.left_rows, right.arrays, found.right_rows)
    return score_table(found.pairs, scores, probs, schema), found.dead_letters


def score_batch(table: pa.Table, columns: PairColumns, kept: Sequence[pa.Field], left: StoreLookup,
                right: StoreLookup, scorer: HeadScorer, schema: pa.Schema, path: str = "<batch>",
                positions: np.ndarray | None = None) -> tuple[pa.Table, list[DeadLetter]]:
    """The whole core on one Arrow batch of pairs (Parquet-typed columns): validate, find ids,
    look up both stores, run the head -> (scores table, every dead letter of the batch)."""
    positions = np.arange(table.num_rows) if positions is None else positions
    prepared = prepare_pairs(table, columns, kept, 0, positions, path)
    scores, missing = score_pairs(prepared.pairs, left, right, scorer, schema, columns, [path])
    return scores, prepared.dead_letters + missing

